"""Energy and carbon footprint: seed 000 Eq. 9/10 and Table 6, seed 001 Eq. 6 in kWh, the meter, the CLI."""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np
import pytest

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.evaluation.carbon import (
    CarbonSettings,
    EnergyMeter,
    cfp_from_time,
    emissions_kg,
    energy_kwh_from_power_samples,
    energy_kwh_from_time,
    normalised_cfp,
)

TABLE_6_MINUTES = [75, 68, 25, 16]  # WV without BRS, WV with BRS, SLS, OV: training time per fold
TABLE_6_CFP_KG = [0.59, 0.54, 0.20, 0.13]
TABLE_6_SD_MINUTES = [21, 13, 12, 4]
TABLE_6_SD_CFP_KG = [0.17, 0.10, 0.10, 0.03]


def test_table_6_cfp_column_from_training_times() -> None:
    assert [round(cfp_from_time(minutes * 60), 2) for minutes in TABLE_6_MINUTES] == TABLE_6_CFP_KG
    assert [round(cfp_from_time(minutes * 60), 2) for minutes in TABLE_6_SD_MINUTES] == TABLE_6_SD_CFP_KG
    assert cfp_from_time(75 * 60) == pytest.approx(0.594, abs=5e-4)


def test_normalised_cfp_is_eq_10_read_literally() -> None:
    cfp = [cfp_from_time(minutes * 60) for minutes in TABLE_6_MINUTES]
    normalised = normalised_cfp(cfp)
    assert [round(value, 3) for value in normalised] == [0.533, 0.577, 0.844, 0.900]
    spread = max(cfp) - min(cfp)
    assert normalised == pytest.approx([1 - spread * value / max(cfp) for value in cfp])
    assert np.argmax(normalised) == 3  # OV, the shortest training, is the best
    for bad in ([], [0.0, 0.0], [0.1, -0.2], [float("nan")]):
        with pytest.raises(InputError):
            normalised_cfp(bad)


def test_settings_change_power_and_emission_factor() -> None:
    settings = CarbonSettings(power_kw=0.3, emission_kg_per_kwh=0.2)
    assert energy_kwh_from_time(7200, settings.power_kw) == pytest.approx(0.6)
    assert cfp_from_time(7200, settings) == pytest.approx(0.12)
    assert emissions_kg(2.0) == pytest.approx(0.95)
    with pytest.raises(InputError):
        CarbonSettings(power_kw=-1.0)
    with pytest.raises(InputError):
        energy_kwh_from_time(-5.0, 1.0)


def test_power_samples_integrate_to_kwh() -> None:
    times = np.arange(0.0, 3600.0 + 1, 60.0)
    assert energy_kwh_from_power_samples(times, np.full_like(times, 500.0)) == pytest.approx(0.5)
    assert energy_kwh_from_power_samples(times, times / 3600.0 * 1000.0) == pytest.approx(0.5)  # 0 -> 1 kW ramp
    uneven = [0.0, 10.0, 1800.0, 3600.0]
    assert energy_kwh_from_power_samples(uneven, [250.0] * 4) == pytest.approx(0.25)
    for bad_times, bad_watts in (([0.0], [1.0]), ([0.0, 1.0], [1.0]), ([1.0, 0.0], [1.0, 1.0]),
                                 ([0.0, 1.0], [1.0, float("nan")]), ([0.0, 1.0], [1.0, -1.0])):
        with pytest.raises(InputError):
            energy_kwh_from_power_samples(bad_times, bad_watts)


def test_time_based_meter_reports_energy_of_the_wall_time() -> None:
    settings = CarbonSettings(power_kw=2.0, emission_kg_per_kwh=0.5)
    with EnergyMeter(settings, method="time") as meter:
        time.sleep(0.2)
    report = meter.report
    assert report.method == "time"
    assert 0.2 <= report.seconds < 5.0
    assert report.energy_kwh == pytest.approx(2.0 * report.seconds / 3600.0, rel=0.05)
    assert report.co2_kg == pytest.approx(0.5 * report.energy_kwh)


def test_auto_meter_falls_back_cleanly() -> None:
    with EnergyMeter(method="auto", interval_s=0.05) as meter:
        time.sleep(0.1)
    report = meter.report
    assert report.method in {"nvml", "codecarbon", "time"}
    if importlib.util.find_spec("pynvml") is None and importlib.util.find_spec("codecarbon") is None:
        assert report.method == "time"
    assert report.energy_kwh >= 0.0 and report.co2_kg == pytest.approx(0.475 * report.energy_kwh)


class FakeNvml:
    """Stand-in for the NVIDIA driver's NVML (no GPU on the test machines): two GPUs drawing 250 W each."""

    def __init__(self) -> None:
        self.initialised = False
        self.samples = 0

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self.samples += 1
        return 250_000  # milliwatts


def test_nvml_meter_integrates_sampled_gpu_power(monkeypatch) -> None:
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with EnergyMeter(method="auto", interval_s=0.02) as meter:
        time.sleep(0.3)
    report = meter.report
    assert report.method == "nvml" and not nvml.initialised
    assert nvml.samples >= 2 * 5  # both GPUs, sampled in the background
    assert report.energy_kwh == pytest.approx(500.0 * report.seconds / 3.6e6, rel=0.1)
    assert report.co2_kg == pytest.approx(0.475 * report.energy_kwh)


def test_unavailable_or_unknown_method_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown energy method"):
        EnergyMeter(method="rapl").__enter__()
    if importlib.util.find_spec("codecarbon") is None:
        with pytest.raises(InputError, match="not available"):
            EnergyMeter(method="codecarbon").__enter__()


def test_carbon_cli_prints_table_6(capsys) -> None:
    code = main(["--progress", "none", "carbon", "--minutes", "75", "68", "25", "16",
                 "--labels", "WV no BRS", "WV BRS", "SLS", "OV"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("|")[1:-1] == [" run ", " minutes ", " energy_kwh ", " cfp_kg ", " normalised_cfp "]
    assert [cell.strip() for cell in lines[2].split("|")[1:-1]] == ["WV no BRS", "75", "1.250", "0.594", "0.533"]
    assert [cell.strip() for cell in lines[5].split("|")[1:-1]] == ["OV", "16", "0.267", "0.127", "0.900"]


@pytest.mark.parametrize("arguments", [
    ["--minutes", "-5"],
    ["--minutes", "0", "0"],
    ["--minutes", "10", "--labels", "a", "b"],
    ["--minutes", "10", "--power-kw", "-1"],
])
def test_carbon_cli_bad_input_exits_2(arguments: list[str], capsys) -> None:
    assert main(["--progress", "none", "carbon", *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
