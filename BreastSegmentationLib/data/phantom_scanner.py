"""The scanner of the synthetic breast DCE-MRI phantom: acquisition parameters and the signal model.

Every tissue has a T1-weighted signal (with or without fat saturation) and contrast kinetics; a post-contrast phase
multiplies the pre-contrast signal by (1 + relative enhancement). The receive-coil bias multiplies everything, cardiac
pulsation ghosts repeat the heart along the phase-encoding axis, a point-spread function blurs, patient motion shifts
the later phases, Rician noise corrupts the magnitude, and the vendor's scaling sets the stored values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .phantom_anatomy import Anatomy, Tissue
from .phantom_fields import Grid, choose, smooth_field, uniform
from .phantom_lesions import Kinetics, LesionMap

BPE_LEVELS = {"minimal": (0.02, 0.1), "mild": (0.1, 0.25), "moderate": (0.25, 0.45), "marked": (0.45, 0.8)}
"""Background parenchymal enhancement level -> range of the FGT's relative enhancement at the first post phase."""
BINOMIAL = np.array([0.25, 0.5, 0.25], np.float32)


@dataclass
class Acquisition:
    """How a case is scanned: grid, scanner, timing and image-quality parameters."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    vendor: str
    convention: str
    field_strength_t: float
    fat_sat: bool
    times_min: list[float]
    snr: float
    bias_strength: float
    blur_passes: int  #: in-plane point-spread blur; 2 = reconstructed at twice the acquired matrix
    slice_blur: bool  #: partial volume across thick slices
    motion_voxels: tuple[float, float, float]  #: shift (x, y, z) of the last post-contrast phase
    ghosting: float  #: amplitude of cardiac pulsation ghosts along the phase-encoding direction
    intensity_target: float  #: the 99.5th percentile of the pre-contrast body signal, in stored units
    field_of_view_mm: float
    edge: bool


@dataclass(frozen=True)
class TissueSignal:
    """T1-weighted signal (fat without saturation = 1), contrast kinetics, and how much the signal varies
    between cases (relative)."""

    plain: float
    fat_sat: float
    kinetics: Kinetics
    jitter: float = 0.1


TISSUE_SIGNALS: dict[Tissue, TissueSignal] = {
    Tissue.AIR: TissueSignal(0.0, 0.0, Kinetics(0.0, 1.0, 0.0)),
    Tissue.SKIN: TissueSignal(0.55, 0.45, Kinetics(0.3, 0.8, -0.05)),
    Tissue.FAT: TissueSignal(1.0, 0.12, Kinetics(0.03, 1.0, 0.0)),
    Tissue.MUSCLE: TissueSignal(0.33, 0.42, Kinetics(0.25, 0.6, -0.05)),
    Tissue.MARROW: TissueSignal(0.8, 0.2, Kinetics(0.25, 1.0, 0.0)),
    Tissue.CORTEX: TissueSignal(0.04, 0.05, Kinetics(0.0, 1.0, 0.0)),
    Tissue.CARTILAGE: TissueSignal(0.3, 0.35, Kinetics(0.08, 0.5, 0.0)),
    Tissue.LUNG: TissueSignal(0.03, 0.04, Kinetics(0.4, 4.0, 0.1)),
    Tissue.BLOOD: TissueSignal(0.4, 0.45, Kinetics(2.8, 6.0, 0.12), jitter=0.35),  # inflow and flow voids
    Tissue.MYOCARDIUM: TissueSignal(0.36, 0.45, Kinetics(1.0, 4.0, 0.08)),
    Tissue.LIVER: TissueSignal(0.45, 0.55, Kinetics(0.5, 1.2, -0.05)),
    Tissue.NIPPLE: TissueSignal(0.42, 0.5, Kinetics(0.8, 1.5, 0.0)),
    Tissue.CSF: TissueSignal(0.12, 0.15, Kinetics(0.0, 1.0, 0.0)),
    Tissue.LYMPH_NODE: TissueSignal(0.36, 0.5, Kinetics(1.0, 3.0, 0.08)),
    Tissue.GLAND: TissueSignal(0.36, 0.58, Kinetics(0.0, 1.0, 0.0)),  # the enhancement is the case's BPE
    Tissue.IMPLANT: TissueSignal(0.2, 0.3, Kinetics(0.0, 1.0, 0.0)),  # silicone: not suppressed by fat-sat
}


def sample_signals(rng: np.random.Generator, bpe_probabilities: Mapping[str, float], acquisition: Acquisition) -> dict:
    """Per-case tissue signals (jittered around :data:`TISSUE_SIGNALS`) and the background parenchymal enhancement."""
    column = 1 if acquisition.fat_sat else 0
    count = max(TISSUE_SIGNALS) + 1
    pre = np.zeros(count, np.float32)
    kinetics = {}
    for tissue, signal in TISSUE_SIGNALS.items():
        pre[tissue] = (signal.plain, signal.fat_sat)[column] * rng.uniform(1.0 - signal.jitter, 1.0 + signal.jitter)
        base = signal.kinetics
        kinetics[tissue] = Kinetics(base.initial * rng.uniform(0.75, 1.25), base.wash_in, base.wash_out)
    level = choose(rng, bpe_probabilities)
    bpe = Kinetics(uniform(rng, *BPE_LEVELS[level]), uniform(rng, 0.3, 1.0), uniform(rng, -0.12, -0.02))
    return {"pre": pre, "kinetics": kinetics, "gland": float(pre[Tissue.GLAND]), "bpe": bpe, "bpe_level": level,
            "fat_failure": rng.uniform(0.0, 0.25) if acquisition.fat_sat else 0.0}


@dataclass
class _Sparse:
    """Flat indices and values of the sparse maps (glands, small vessels, lesions), mixed in without
    whole-volume products."""

    gland_at: np.ndarray
    gland: np.ndarray
    vessel_at: np.ndarray
    vessel: np.ndarray
    lesion_at: np.ndarray
    lesion_row: np.ndarray
    lesion_weight: np.ndarray

    @classmethod
    def of(cls, anatomy: Anatomy, lesions: LesionMap) -> _Sparse:
        gland_at, vessel_at = np.flatnonzero(anatomy.gland), np.flatnonzero(anatomy.vessels)
        lesion_at = np.flatnonzero(lesions.index)
        return cls(gland_at, anatomy.gland.ravel()[gland_at], vessel_at, anatomy.vessels.ravel()[vessel_at],
                   lesion_at, lesions.index.ravel()[lesion_at], lesions.weight.ravel()[lesion_at])


def synthesise(anatomy: Anatomy, lesions: LesionMap, acquisition: Acquisition, signals: dict,
               rng: np.random.Generator) -> list[np.ndarray]:
    """Noisy magnitude images of every phase (pre first), before vendor scaling."""
    sparse = _Sparse.of(anatomy, lesions)
    pre = _pre_contrast(anatomy, lesions, acquisition, signals, sparse, rng)
    pre *= _bias_field(rng, anatomy, acquisition)
    noise_sigma = float(np.percentile(pre[anatomy.breast][::7], 90)) / acquisition.snr \
        if anatomy.breast.any() else float(pre.max()) / acquisition.snr
    heart = np.isin(anatomy.tissue, (Tissue.BLOOD, Tissue.MYOCARDIUM))
    phases = [pre] + [pre * (1.0 + enhancement)
                      for enhancement in _enhancements(anatomy, lesions, acquisition, signals, sparse, rng)]
    for index, volume in enumerate(phases):
        _add_ghosts(volume, heart, acquisition.ghosting, rng)
        _point_spread(volume, acquisition)
        if index > 0 and any(acquisition.motion_voxels):
            fraction = index / (len(phases) - 1)
            _shift_linear(volume, [value * fraction for value in acquisition.motion_voxels])
        phases[index] = _rician(volume, noise_sigma, rng)
    return phases


def _pre_contrast(anatomy: Anatomy, lesions: LesionMap, acquisition: Acquisition, signals: dict, sparse: _Sparse,
                  rng: np.random.Generator) -> np.ndarray:
    """Pre-contrast T1 signal: tissue labels, FGT and vessel shares mixed in, lesions like (or below) FGT."""
    tissue = anatomy.tissue
    pre = signals["pre"][tissue]
    if acquisition.fat_sat:
        fat = tissue == Tissue.FAT
        pre[fat] += _fat_sat_failure(rng, anatomy.grid, signals["fat_failure"])[fat]
    flat = pre.reshape(-1)
    flat[sparse.gland_at] += sparse.gland * (signals["gland"] - flat[sparse.gland_at])
    flat[sparse.vessel_at] += sparse.vessel * (float(signals["pre"][Tissue.BLOOD]) - flat[sparse.vessel_at])
    flat[sparse.lesion_at] = signals["gland"] * lesions.pre_ratio[sparse.lesion_row]
    return pre


def _enhancements(anatomy: Anatomy, lesions: LesionMap, acquisition: Acquisition, signals: dict, sparse: _Sparse,
                  rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Relative enhancement of every voxel at each post-contrast time: tissue curves, patchy BPE, blood in
    vessels, lesion curves times their spatial weights."""
    z, y, x = anatomy.grid.coords()
    pattern = np.clip(1.0 + 0.5 * smooth_field(rng, z, y, x, 15.0).ravel()[sparse.gland_at], 0.1, 2.0)
    times = acquisition.times_min
    tissue_curves = np.zeros((len(signals["pre"]), len(times)), np.float32)
    for label, kinetics in signals["kinetics"].items():
        tissue_curves[label] = kinetics.curve(times)
    gland_curve = signals["bpe"].curve(times)
    for phase in range(len(times)):
        enhancement = tissue_curves[:, phase][anatomy.tissue]
        flat = enhancement.reshape(-1)
        flat[sparse.gland_at] += sparse.gland * (gland_curve[phase] * pattern - flat[sparse.gland_at])
        flat[sparse.vessel_at] += sparse.vessel * (tissue_curves[Tissue.BLOOD, phase] - flat[sparse.vessel_at])
        flat[sparse.lesion_at] = lesions.curves[sparse.lesion_row, phase] * sparse.lesion_weight
        yield enhancement


def _fat_sat_failure(rng: np.random.Generator, grid: Grid, strength: float) -> np.ndarray:
    """Fat left unsuppressed: patchy, and worse towards the lateral edges of the field of view."""
    z, y, x = grid.coords()
    half_width = 0.5 * grid.size[0] * grid.spacing[0]
    patches = np.clip(smooth_field(rng, z, y, x, 60.0) - 0.3, 0.0, None)
    return (strength * patches + 0.35 * strength * (x / half_width) ** 4).astype(np.float32)


def _bias_field(rng: np.random.Generator, anatomy: Anatomy, acquisition: Acquisition) -> np.ndarray:
    """Receive-coil sensitivity: strongest beside the breasts (coil elements lateral and medial to each breast,
    under the prone patient), falling off posteriorly, times a smooth random field; B1 asymmetry at 3 T."""
    grid = anatomy.grid
    z, y, x = grid.coords()
    x2, y2 = x[0], y[0]
    sensitivity = np.zeros((grid.shape[1], grid.shape[2]), np.float32)
    reach = rng.uniform(55.0, 95.0)
    for breast in anatomy.subject.breasts:
        middle = breast.centre(0.45)
        for offset in (-1.0, 1.0):
            element_x = middle[0] + offset * (breast.half_width + 15.0)
            sensitivity += 1.0 / (1.0 + ((x2 - element_x) ** 2 + (y2 - middle[1]) ** 2) / reach**2)
    sensitivity /= np.percentile(sensitivity, 99)
    strength = acquisition.bias_strength
    in_plane = (1.0 - strength) + strength * sensitivity
    if acquisition.field_strength_t >= 3.0:
        in_plane *= 1.0 + rng.uniform(-0.15, 0.15) * x2 / (0.5 * grid.size[0] * grid.spacing[0])
    along_z = np.clip(1.0 - 0.4 * strength * (z[:, 0, 0] / 100.0) ** 2, 0.4, 1.0)
    smooth = np.exp(0.25 * strength * smooth_field(rng, z, y, x, 120.0))
    return (in_plane[None] * along_z[:, None, None] * smooth).astype(np.float32)


def _add_ghosts(volume: np.ndarray, heart: np.ndarray, amplitude: float, rng: np.random.Generator) -> None:
    """Cardiac pulsation ghosts: faint copies of the heart repeated along the left-right phase-encoding axis."""
    if amplitude <= 0 or not heart.any():
        return
    slices = np.nonzero(heart.any(axis=(1, 2)))[0]
    rows = np.nonzero(heart.any(axis=(0, 2)))[0]
    band = (slice(slices[0], slices[-1] + 1), slice(rows[0], rows[-1] + 1), slice(None))
    source = volume[band] * heart[band]
    width = volume.shape[2]
    spacing = int(rng.integers(width // 6, width // 3))
    for copy in (1, 2):
        for sign in (-1, 1):
            volume[band] += (amplitude / copy) * np.roll(source, sign * copy * spacing, axis=2)


def _point_spread(volume: np.ndarray, acquisition: Acquisition) -> None:
    """In-place [1, 2, 1]/4 blur: the in-plane PSF (twice for interpolated matrices) and slab partial volume."""
    axes = [1, 2] * acquisition.blur_passes + ([0] if acquisition.slice_blur else [])
    for axis in axes:
        if axis == 2:
            ndimage.correlate1d(volume, BINOMIAL, axis=2, output=volume, mode="nearest")
            continue
        # Slicing beats ndimage.correlate1d about fivefold on the non-contiguous axes of a large volume.
        moved = np.moveaxis(volume, axis, 0)
        first, last = 0.75 * moved[0] + 0.25 * moved[1], 0.75 * moved[-1] + 0.25 * moved[-2]
        moved[1:-1] = 0.5 * moved[1:-1] + 0.25 * (moved[:-2] + moved[2:])
        moved[0], moved[-1] = first, last


def _shift_linear(volume: np.ndarray, shift_xyz: Sequence[float]) -> None:
    """In-place sub-voxel shift (|shift| < 1 voxel per axis) by linear interpolation: patient motion."""
    for axis, shift in zip((2, 1, 0), shift_xyz):
        fraction = float(np.clip(abs(shift), 0.0, 1.0))
        if fraction < 1e-3:
            continue
        moved = np.moveaxis(volume, axis, 0)
        if shift > 0:
            moved[1:] = (1.0 - fraction) * moved[1:] + fraction * moved[:-1]
        else:
            moved[:-1] = (1.0 - fraction) * moved[:-1] + fraction * moved[1:]


def _rician(volume: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (in place; np.hypot is ~8x slower here)."""
    volume += rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(sigma)
    volume *= volume
    imaginary = rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(sigma)
    imaginary *= imaginary
    volume += imaginary
    return np.sqrt(volume, out=volume)


def vendor_scale(phases: list[np.ndarray], anatomy: Anatomy, acquisition: Acquisition) -> list[np.ndarray]:
    """Vendor-like stored values: GE signed 16-bit, Siemens 12-bit, Philips floating point."""
    body = anatomy.surface_distance > 0
    reference = float(np.percentile(phases[0][body][::5], 99.5)) if body.any() else float(phases[0].max())
    factor = acquisition.intensity_target / max(reference, 1e-6)
    if acquisition.vendor == "Philips":
        return [(phase * factor).astype(np.float32) for phase in phases]
    high, dtype = (4095, np.uint16) if acquisition.vendor == "Siemens" else (32767, np.int16)
    return [np.clip(np.rint(phase * factor), 0, high).astype(dtype) for phase in phases]
