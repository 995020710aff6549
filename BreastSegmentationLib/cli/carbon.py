"""``breastseg carbon``: energy, carbon footprint and normalised CFP of training runs from their durations."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..evaluation.carbon import CarbonSettings, cfp_from_time, energy_kwh_from_time, normalised_cfp
from ..progress import Progress
from ..reports.tables import markdown_table

DESCRIPTION = """\
Turn run durations into energy, CO2 and normalised carbon footprint, as seed 000 Table 6:
  energy [kWh]  = power [kW] * minutes / 60
  CFP [kg CO2]  = emission factor [kg/kWh] * energy                   (Eq. 9)
  normalised    = 1 - (CFP_max - CFP_min) * CFP / CFP_max, CFP in kg  (Eq. 10, higher is better)
Example (Table 6): breastseg carbon --minutes 75 68 25 16 --labels "WV no BRS" "WV BRS" SLS OV"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "carbon",
        help="energy and carbon footprint of runs from their durations (seed 000 Eq. 9 and 10)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = CarbonSettings()
    parser.add_argument("--minutes", type=float, nargs="+", required=True, metavar="MIN",
                        help="duration of each run in minutes (e.g. training time per fold)")
    parser.add_argument("--labels", nargs="+", metavar="NAME", help="a name for each run, in the same order")
    parser.add_argument("--power-kw", type=float, default=defaults.power_kw,
                        help=f"mean power draw in kW (default {defaults.power_kw:g}, seed 000's assumption)")
    parser.add_argument("--factor", type=float, default=defaults.emission_kg_per_kwh, metavar="KG_PER_KWH",
                        help=f"emission factor in kg CO2 per kWh (default {defaults.emission_kg_per_kwh:g}, IEA 2019)")
    parser.set_defaults(handler=run)


def carbon_rows(minutes: list[float], labels: list[str] | None, settings: CarbonSettings) -> list[dict]:
    """One table row per run: its name, minutes, kWh, kg CO2 and normalised CFP."""
    if labels is not None and len(labels) != len(minutes):
        raise InputError(f"{len(labels)} labels for {len(minutes)} durations: give one label per duration")
    seconds = [value * 60.0 for value in minutes]
    cfp = [cfp_from_time(value, settings) for value in seconds]
    normalised = normalised_cfp(cfp)
    names = labels or [str(index) for index in range(1, len(minutes) + 1)]
    return [
        {"run": name, "minutes": f"{minute:g}", "energy_kwh": energy_kwh_from_time(second, settings.power_kw),
         "cfp_kg": cfp_value, "normalised_cfp": normalised_value}
        for name, minute, second, cfp_value, normalised_value in zip(names, minutes, seconds, cfp, normalised)
    ]


def run(args: argparse.Namespace, progress: Progress) -> int:
    settings = CarbonSettings(power_kw=args.power_kw, emission_kg_per_kwh=args.factor)
    print(markdown_table(carbon_rows(args.minutes, args.labels, settings)), end="")
    return 0
