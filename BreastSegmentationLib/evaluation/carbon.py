"""Energy and carbon footprint (CFP) of a run: from wall time (seed 000 Eq. 9), from sampled power (seed 001
Eq. 6) and normalised across runs (seed 000 Eq. 10).

Energy is in kWh and CO2 in kg throughout. Seed 001's Eq. 6 multiplies watts by hours and calls it kWh; here the
power integral is divided by 1000 as well, so a constant 500 W for one hour is 0.5 kWh.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.integrate import trapezoid

from ..errors import InputError

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class CarbonSettings:
    """Assumed power draw for time-based estimates (seed 000: about 1 kW per training session) and the emission
    factor of the electricity (0.475 kg CO2 per kWh, IEA 2019, used by seeds 000 and 001)."""

    power_kw: float = 1.0
    emission_kg_per_kwh: float = 0.475

    def __post_init__(self) -> None:
        if not (self.power_kw >= 0 and self.emission_kg_per_kwh >= 0):
            raise InputError(f"power ({self.power_kw} kW) and emission factor ({self.emission_kg_per_kwh} kg/kWh) "
                             "must be non-negative numbers")


def energy_kwh_from_time(seconds: float, power_kw: float) -> float:
    """Energy of a constant ``power_kw`` drawn for ``seconds``."""
    if not seconds >= 0:
        raise InputError(f"a duration must be a non-negative number of seconds, got {seconds}")
    return power_kw * seconds / SECONDS_PER_HOUR


def emissions_kg(energy_kwh: float, settings: CarbonSettings = CarbonSettings()) -> float:
    """CO2 in kg of ``energy_kwh`` at the settings' emission factor."""
    return settings.emission_kg_per_kwh * energy_kwh


def cfp_from_time(seconds: float, settings: CarbonSettings = CarbonSettings()) -> float:
    """Seed 000 Eq. 9: CFP [kg] = factor * power * TT[s] / 3600; 75 min at 1 kW and 0.475 kg/kWh -> 0.594 kg."""
    return emissions_kg(energy_kwh_from_time(seconds, settings.power_kw), settings)


def energy_kwh_from_power_samples(times_s: Sequence[float], watts: Sequence[float]) -> float:
    """Energy of power samples ``watts`` taken at ``times_s`` (seed 001 Eq. 6), by the trapezoid rule, in kWh."""
    times = np.asarray(times_s, dtype=np.float64)
    power = np.asarray(watts, dtype=np.float64)
    if times.ndim != 1 or times.shape != power.shape or len(times) < 2:
        raise InputError(f"need at least two (time, power) samples of equal count, got {times.shape} and {power.shape}")
    finite = np.all(np.isfinite(times)) and np.all(np.isfinite(power))
    if not finite or np.any(np.diff(times) < 0) or np.any(power < 0):
        raise InputError("power samples need finite, non-decreasing times and finite, non-negative watts")
    return float(trapezoid(power, times)) / JOULES_PER_KWH


def normalised_cfp(values: Sequence[float]) -> list[float]:
    """Seed 000 Eq. 10, read literally with CFP in kg: 1 - (CFP_max - CFP_min) * CFP / CFP_max (higher is better).

    The paper prints no normalised values (Table 6 has times and CFP only), so no reading can be checked against
    it; this one keeps the kg factor (CFP_max - CFP_min) that the printed formula has, so the result depends on the
    unit: Table 6's 75/68/25/16 min give 0.533, 0.577, 0.844, 0.900.
    """
    cfp = np.asarray(values, dtype=np.float64)
    if cfp.ndim != 1 or len(cfp) == 0 or not np.all(np.isfinite(cfp)) or np.any(cfp < 0) or cfp.max() <= 0:
        raise InputError(f"normalised CFP needs finite non-negative values, at least one positive, got {list(values)}")
    return [float(value) for value in 1.0 - (cfp.max() - cfp.min()) * (cfp / cfp.max())]


@dataclass(frozen=True)
class EnergyReport:
    """What an :class:`EnergyMeter` measured: ``method`` is ``nvml``, ``codecarbon`` or ``time``."""

    method: str
    seconds: float
    energy_kwh: float
    co2_kg: float


class _Sampler(Protocol):
    method: str

    def start(self) -> None: ...

    def stop(self) -> float:
        """Stop measuring; return the energy in kWh since :meth:`start`."""


class _NvmlPowerSampler:
    """Board power of every NVIDIA GPU that NVML sees, summed, sampled in a background thread."""

    method = "nvml"

    def __init__(self, interval_s: float):
        import pynvml  # optional: only when the nvidia-ml-py package is installed

        pynvml.nvmlInit()
        try:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(pynvml.nvmlDeviceGetCount())]
        except Exception:
            pynvml.nvmlShutdown()
            raise
        if not self._handles:
            pynvml.nvmlShutdown()
            raise RuntimeError("NVML sees no GPU")
        self._nvml = pynvml
        self._interval_s = interval_s
        self._times: list[float] = []
        self._watts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-power", daemon=True)

    def _sample(self) -> None:
        watts = sum(self._nvml.nvmlDeviceGetPowerUsage(handle) for handle in self._handles) / 1000.0  # mW -> W
        self._times.append(time.monotonic())
        self._watts.append(watts)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._nvml.nvmlShutdown()
        return energy_kwh_from_power_samples(self._times, self._watts)


class _CodecarbonSampler:
    """codecarbon's offline tracker (CPU, GPU and RAM power, estimated where not measurable); only its kWh are used."""

    method = "codecarbon"

    def __init__(self, interval_s: float):
        from codecarbon import OfflineEmissionsTracker  # optional: the [carbon] extra

        self._tracker = OfflineEmissionsTracker(country_iso_code="NOR", measure_power_secs=max(interval_s, 1.0),
                                                save_to_file=False, log_level="error")

    def start(self) -> None:
        self._tracker.start()

    def stop(self) -> float:
        self._tracker.stop()
        return float(self._tracker.final_emissions_data.energy_consumed)


class _TimeSampler:
    """No measurement: energy is the settings' power times the wall time."""

    method = "time"

    def __init__(self, power_kw: float):
        self._power_kw = power_kw
        self._start = 0.0

    def start(self) -> None:
        self._start = time.monotonic()

    def stop(self) -> float:
        return energy_kwh_from_time(time.monotonic() - self._start, self._power_kw)


def _make_sampler(method: str, settings: CarbonSettings, interval_s: float) -> _Sampler:
    """The first sampler of ``method`` (or of nvml -> codecarbon -> time for ``auto``) that can start here."""
    candidates: dict[str, Callable[[], _Sampler]] = {
        "nvml": lambda: _NvmlPowerSampler(interval_s),
        "codecarbon": lambda: _CodecarbonSampler(interval_s),
        "time": lambda: _TimeSampler(settings.power_kw),
    }
    if method != "auto" and method not in candidates:
        raise InputError(f"unknown energy method {method!r}; choose auto, {', '.join(candidates)}")
    for name in (candidates if method == "auto" else [method]):
        try:
            return candidates[name]()
        except Exception as error:  # a missing package, no GPU or no driver: try the next method
            if method != "auto":
                raise InputError(f"energy method {name!r} is not available here: {error}") from error
            log.debug("energy method %s unavailable: %s", name, error)
    raise AssertionError("the time-based method is always available")


class EnergyMeter(contextlib.AbstractContextManager):
    """Measure the energy and CO2 of the code inside ``with EnergyMeter() as meter:``; read ``meter.report``.

    ``method="auto"`` uses NVML GPU power when ``pynvml`` imports and sees a GPU (GPU boards only, all GPUs of the
    machine), else codecarbon's offline tracker when installed, else the settings' power times the wall time.
    CO2 is always energy times the settings' emission factor, so every method is comparable with Eq. 6 and 9.
    """

    def __init__(self, settings: CarbonSettings = CarbonSettings(), method: str = "auto", interval_s: float = 1.0):
        self.settings = settings
        self.method = method
        self.interval_s = interval_s
        self.report: EnergyReport | None = None

    def __enter__(self) -> EnergyMeter:
        self._sampler = _make_sampler(self.method, self.settings, self.interval_s)
        self._started = time.monotonic()
        self._sampler.start()
        return self

    def __exit__(self, *exc_info) -> None:
        energy_kwh = self._sampler.stop()
        self.report = EnergyReport(
            method=self._sampler.method,
            seconds=time.monotonic() - self._started,
            energy_kwh=energy_kwh,
            co2_kg=emissions_kg(energy_kwh, self.settings),
        )
