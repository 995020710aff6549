"""Synthetic prone breast DCE-MRI cases: the project's test data and the training data of its bundled models.

:func:`generate_case` draws one case from a seed: a subject (:mod:`.phantom_subject`) drawn on a grid
(:mod:`.phantom_anatomy`), lesions with kinetics (:mod:`.phantom_lesions`) and an acquisition (vendor, field
strength, fat saturation, matrix, spacing, post-contrast timing, coil bias, noise) that the signal model turns into
images (:mod:`.phantom_scanner`). :func:`write_cases` writes NIfTI case folders and optionally DICOM studies;
:func:`read_case` reads a folder back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.dicom_write import EXTRAS, write_dce_study
from ..io.outputs import atomic_output_dir
from ..progress import Progress
from .phantom_anatomy import Anatomy, build_anatomy
from .phantom_fields import Grid, choose
from .phantom_lesions import DELAYED_RATES, LESION_TYPES, WASH_IN_RATES, LesionMap, LesionSettings, draw_lesions
from .phantom_scanner import BPE_LEVELS, Acquisition, sample_signals, synthesise, vendor_scale
from .phantom_subject import Subject, sample_subject

VENDORS = {"GE": ("ge_multiphase",), "Siemens": ("siemens", "siemens_twist"), "Philips": ("philips",)}
MATRIX_STEP = 32
DICOM_EXTRA_PROBABILITY = 0.3


@dataclass
class PhantomConfig:
    """Ranges and probabilities a case is drawn from (millimetres, minutes)."""

    matrix_range: tuple[int, int] = (256, 512)
    inplane_spacing_range_mm: tuple[float, float] = (0.6, 1.1)
    slice_thickness_range_mm: tuple[float, float] = (1.0, 3.0)
    slices_range: tuple[int, int] = (60, 200)
    field_of_view_range_mm: tuple[float, float] = (300.0, 380.0)
    coverage_range_mm: tuple[float, float] = (140.0, 200.0)  #: cranio-caudal extent of the slab
    rectangular_fov_probability: float = 0.3  #: fewer rows than columns (antero-posterior phase FOV reduced)
    post_phases: int = 3
    first_post_range_min: tuple[float, float] = (1.0, 2.0)
    phase_interval_range_min: tuple[float, float] = (0.8, 2.0)
    fat_sat_probability: float = 0.5
    vendor_probabilities: Mapping[str, float] = field(
        default_factory=lambda: {"GE": 0.35, "Siemens": 0.35, "Philips": 0.3})
    three_tesla_probability: float = 0.5
    snr_range: tuple[float, float] = (20.0, 60.0)  #: breast tissue signal over noise sigma at 1.5 T
    bias_strength_range: tuple[float, float] = (0.3, 0.75)
    motion_probability: float = 0.25
    ghosting_probability: float = 0.4
    edge_probability: float = 0.15  #: the nipple at (or just beyond) the anterior image edge
    bpe_probabilities: Mapping[str, float] = field(
        default_factory=lambda: {"minimal": 0.35, "mild": 0.35, "moderate": 0.2, "marked": 0.1})
    lesion_count_range: tuple[int, int] = (0, 3)
    lesion_diameter_range_mm: tuple[float, float] = (3.0, 40.0)
    lesion_type_probabilities: Mapping[str, float] = field(
        default_factory=lambda: {"round": 0.3, "lobulated": 0.25, "irregular": 0.3, "non_mass": 0.15})
    wash_in_probabilities: Mapping[str, float] = field(
        default_factory=lambda: {"fast": 0.55, "medium": 0.3, "slow": 0.15})
    delayed_probabilities: Mapping[str, float] = field(
        default_factory=lambda: {"persistent": 0.3, "plateau": 0.35, "washout": 0.35})
    lesion_conspicuity_range: tuple[float, float] = (0.25, 2.5)  #: enhancement above the FGT's, subtle to strong
    necrosis_probability: float = 0.3  #: rim enhancement around a necrotic centre (masses of 12 mm or more)

    def validate(self) -> None:
        """Raise :class:`InputError` for empty ranges, impossible probabilities or no post-contrast phase."""
        for name, value in asdict(self).items():
            if name.endswith("_range") or name.endswith("_range_mm") or name.endswith("_range_min"):
                low, high = value
                if not 0 <= low <= high:
                    raise InputError(f"phantom config: {name} must be 0 <= low <= high, got {value}")
            elif name.endswith("_probability") and not 0.0 <= value <= 1.0:
                raise InputError(f"phantom config: {name} must lie in 0..1, got {value}")
            elif name.endswith("_probabilities") and (min(value.values()) < 0 or sum(value.values()) <= 0):
                raise InputError(f"phantom config: {name} needs non-negative weights with a positive sum")
        if self.snr_range[0] <= 0:
            raise InputError(f"phantom config: snr_range must be positive, got {self.snr_range}")
        if self.post_phases < 1:
            raise InputError(f"phantom config: post_phases must be at least 1, got {self.post_phases}")
        known = {"vendor_probabilities": VENDORS, "bpe_probabilities": BPE_LEVELS,
                 "lesion_type_probabilities": LESION_TYPES, "wash_in_probabilities": WASH_IN_RATES,
                 "delayed_probabilities": DELAYED_RATES}
        for name, names in known.items():
            unknown = sorted(set(getattr(self, name)) - set(names))
            if unknown:
                raise InputError(f"phantom config: {name} names unknown {unknown}; choose from {sorted(names)}")

    def lesion_settings(self) -> LesionSettings:
        return LesionSettings(self.lesion_count_range, self.lesion_diameter_range_mm, self.lesion_type_probabilities,
                              self.wash_in_probabilities, self.delayed_probabilities, self.lesion_conspicuity_range,
                              self.necrosis_probability)


@dataclass
class PhantomCase:
    """One synthetic DCE-MRI case: images share one grid; masks are UInt8 0/1."""

    pre: sitk.Image
    posts: list[sitk.Image]  #: post-contrast phases in time order; ``posts[0]`` is the first post
    breast: sitk.Image
    lesions: sitk.Image
    info: dict
    tissue: sitk.Image | None = None  #: UInt8 :class:`~.phantom_anatomy.Tissue` labels (not written to disk)

    def subtraction(self, phase: int = 0) -> sitk.Image:
        """Float32 ``posts[phase] - pre``."""
        return sitk.Cast(self.posts[phase], sitk.sitkFloat32) - sitk.Cast(self.pre, sitk.sitkFloat32)


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a set drawn with ``seed``: adding cases never changes the earlier ones."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"the seed must be a non-negative integer, got {seed!r}")


def _check_shape(shape: Sequence[int] | None, spacing: Sequence[float] | None) -> None:
    if shape is not None and (len(shape) != 3 or min(shape[:2]) < 32 or shape[2] < 8):
        raise InputError(f"the phantom shape (x, y, z) needs at least 32 x 32 x 8 voxels, got {tuple(shape)}")
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise InputError(f"the phantom spacing (x, y, z) must be three positive lengths in mm, got {tuple(spacing)}")


def _matrix_and_spacing(rng: np.random.Generator, config: PhantomConfig, fov: float) -> tuple[int, float]:
    """A matrix (multiple of 32 when possible) whose pixel size over ``fov`` lies in the configured range."""
    low, high = config.matrix_range
    spacing_low, spacing_high = config.inplane_spacing_range_mm
    candidates = [m for m in range(low, high + 1) if m % MATRIX_STEP == 0 and spacing_low <= fov / m <= spacing_high]
    if candidates:
        matrix = int(rng.choice(candidates))
        return matrix, fov / matrix
    matrix = int(np.clip(round(fov / (0.5 * (spacing_low + spacing_high))), low, high))
    return matrix, float(np.clip(fov / matrix, spacing_low, spacing_high))


def sample_acquisition(rng: np.random.Generator, config: PhantomConfig, shape: Sequence[int] | None = None,
                       spacing: Sequence[float] | None = None) -> Acquisition:
    """Draw the scanner, grid and image quality of a case; ``shape``/``spacing`` (x, y, z) override the grid while
    every random draw stays the same (so a small test case shows the same subject and scanner)."""
    fov = rng.uniform(*config.field_of_view_range_mm)
    matrix, pixel = _matrix_and_spacing(rng, config, fov)
    rows = matrix
    if rng.random() < config.rectangular_fov_probability:
        rows = int(max(config.matrix_range[0], round(matrix * rng.uniform(0.75, 0.95) / 16) * 16))
    thin, thick = config.slice_thickness_range_mm
    thickness = float(np.round(thin + (thick - thin) * rng.beta(1.3, 2.2), 1))  # mostly 1-2 mm, as in clinics
    coverage = rng.uniform(*config.coverage_range_mm)
    slices = int(np.clip(round(coverage / thickness), *config.slices_range))
    vendor = choose(rng, config.vendor_probabilities)
    convention = str(rng.choice(VENDORS[vendor]))
    field_strength = 3.0 if rng.random() < config.three_tesla_probability else 1.5
    fat_sat = bool(rng.random() < config.fat_sat_probability)
    first = rng.uniform(*config.first_post_range_min)
    interval = rng.uniform(*config.phase_interval_range_min) * (0.5 if convention == "siemens_twist" else 1.0)
    times = [round(float(first + phase * interval), 3) for phase in range(config.post_phases)]
    snr = rng.uniform(*config.snr_range) * (1.5 if field_strength == 3.0 else 1.0)
    bias = min(rng.uniform(*config.bias_strength_range) * (1.15 if field_strength == 3.0 else 1.0), 0.9)
    blur_passes = 2 if matrix >= 448 or rng.random() < 0.3 else 1
    moved = rng.random() < config.motion_probability
    shift = rng.uniform(-0.7, 0.7, 3)
    motion = tuple(float(value) for value in shift) if moved else (0.0, 0.0, 0.0)
    ghosting = float(rng.uniform(0.02, 0.08)) if rng.random() < config.ghosting_probability else 0.0
    target = {"GE": rng.uniform(600, 2000), "Siemens": rng.uniform(300, 1100),
              "Philips": float(np.exp(rng.uniform(np.log(50), np.log(3000))))}[vendor]
    edge = bool(rng.random() < config.edge_probability)
    size = (matrix, rows, slices)
    grid_spacing = (pixel, pixel, thickness)
    if shape is not None:
        size = tuple(int(value) for value in shape)
        in_plane = matrix * pixel / size[0]
        grid_spacing = (in_plane, in_plane, slices * thickness / size[2])
    if spacing is not None:
        grid_spacing = tuple(float(value) for value in spacing)
        if shape is None:
            extent = (matrix * pixel, rows * pixel, slices * thickness)
            size = tuple(max(8, int(round(extent[dim] / grid_spacing[dim]))) for dim in range(3))
    return Acquisition(
        size=size, spacing=grid_spacing, vendor=vendor, convention=convention, field_strength_t=field_strength,
        fat_sat=fat_sat, times_min=times, snr=float(snr), bias_strength=float(bias), blur_passes=blur_passes,
        slice_blur=grid_spacing[2] > 2.0, motion_voxels=motion, ghosting=ghosting, intensity_target=float(target),
        field_of_view_mm=float(fov), edge=edge)


def place_grid(subject: Subject, acquisition: Acquisition, rng: np.random.Generator) -> Grid:
    """Put the field of view on the subject: nipples near the anterior (top) edge, some cases off-centre."""
    tips = np.array([breast.nipple_tip() for breast in subject.breasts])
    margin = rng.uniform(-3.0, 3.0) if acquisition.edge else rng.uniform(6.0, 40.0)
    nx, ny, nz = acquisition.size
    sx, sy, sz = acquisition.spacing
    x_centre = rng.uniform(-20.0, 20.0)
    z_centre = rng.uniform(-25.0, 10.0)
    origin = (x_centre - 0.5 * (nx - 1) * sx, float(tips[:, 1].min()) - margin, z_centre - 0.5 * (nz - 1) * sz)
    return Grid(acquisition.size, acquisition.spacing, origin)


def generate_case(seed: int, config: PhantomConfig | None = None, *, shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None) -> PhantomCase:
    """Draw one case from ``seed``. ``shape`` and ``spacing`` (x, y, z) override the sampled grid (for tests); with
    only ``shape`` the field of view is kept, so the anatomy stays whole at a coarser resolution."""
    _check_seed(seed)
    _check_shape(shape, spacing)
    config = config or PhantomConfig()
    config.validate()
    scan_rng, subject_rng, anatomy_rng, lesion_rng, signal_rng, study_rng = (
        np.random.default_rng(stream) for stream in np.random.SeedSequence(seed).spawn(6))
    acquisition = sample_acquisition(scan_rng, config, shape, spacing)
    subject = sample_subject(subject_rng)
    grid = place_grid(subject, acquisition, scan_rng)
    anatomy = build_anatomy(subject, grid, anatomy_rng)
    signals = sample_signals(signal_rng, config.bpe_probabilities, acquisition)
    lesions = draw_lesions(anatomy, lesion_rng, config.lesion_settings(), acquisition.times_min,
                           signals["bpe"].curve(acquisition.times_min)[0])
    phases = synthesise(anatomy, lesions, acquisition, signals, signal_rng)
    images = [_to_image(phase, grid) for phase in vendor_scale(phases, anatomy, acquisition)]
    info = _describe(seed, acquisition, anatomy, lesions, signals)
    # Decoy series (T2, localizer, derived subtraction, ...) that a DICOM study of this case also holds.
    info["dicom_extras"] = [name for name in EXTRAS if study_rng.random() < DICOM_EXTRA_PROBABILITY]
    return PhantomCase(pre=images[0], posts=images[1:], breast=_mask_image(anatomy.breast, grid),
                       lesions=_mask_image(lesions.mask, grid), info=info, tissue=_mask_image(anatomy.labels(), grid))


def _to_image(array: np.ndarray, grid: Grid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    return image


def _mask_image(labels: np.ndarray, grid: Grid) -> sitk.Image:
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    return image


def _describe(seed: int, acquisition: Acquisition, anatomy: Anatomy, lesions: LesionMap, signals: dict) -> dict:
    """The JSON-able ``info`` of a case."""
    grid = anatomy.grid
    breast_voxels = int(anatomy.breast.sum())
    sides = {}
    for breast in anatomy.subject.breasts:
        sides[breast.side] = {"depth_mm": round(breast.depth, 1), "base_width_mm": round(2 * breast.half_width, 1),
                              "base_height_mm": round(2 * breast.half_height, 1),
                              "nipple_mm": [round(float(value), 1) for value in breast.nipple_tip()]}
    return {
        "seed": int(seed),
        "vendor": acquisition.vendor,
        "dicom_convention": acquisition.convention,
        "field_strength_t": acquisition.field_strength_t,
        "fat_sat": acquisition.fat_sat,
        "shape": list(grid.size),  # voxels (x, y, z), as --shape takes them
        "spacing": [round(value, 5) for value in grid.spacing],
        "origin": [round(value, 3) for value in grid.origin],
        "field_of_view_mm": round(acquisition.field_of_view_mm, 1),
        "post_phases": len(acquisition.times_min),
        "post_times_min": acquisition.times_min,
        "snr": round(acquisition.snr, 2),
        "bias_strength": round(acquisition.bias_strength, 3),
        "motion_voxels": [round(value, 3) for value in acquisition.motion_voxels],
        "ghosting": round(acquisition.ghosting, 3),
        "nipple_at_edge": acquisition.edge,
        "density": anatomy.subject.density,
        "implants": any(breast.implant > 0 for breast in anatomy.subject.breasts),
        "fgt_fraction": round(float(anatomy.gland.sum()) / max(breast_voxels, 1), 4),
        "bpe": {"level": signals["bpe_level"], "initial_enhancement": round(signals["bpe"].initial, 3)},
        "breast_volume_ml": round(breast_voxels * grid.voxel_volume / 1000.0, 2),
        "breasts": sides,
        "lesions": lesions.info,
    }


def write_cases(out_dir: str | os.PathLike, n_cases: int, seed: int, config: PhantomConfig | None = None,
                dicom: bool = False, progress: Progress | None = None, *,
                shape: Sequence[int] | None = None) -> list[Path]:
    """Write ``n_cases`` case folders ``case_000/`` ... into ``out_dir`` (all or nothing) and return their paths.

    Each holds ``pre.nii.gz``, ``post.nii.gz`` (first post), ``post2.nii.gz`` ..., ``breast.nii.gz``,
    ``lesions.nii.gz``, ``case.json`` and, with ``dicom``, a ``dicom/`` study in the case's vendor convention
    (with the decoy series listed in ``info["dicom_extras"]``).
    """
    if not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise InputError(f"the number of cases must be at least 1, got {n_cases!r}")
    _check_seed(seed)
    _check_shape(shape, None)
    config = config or PhantomConfig()
    config.validate()
    progress = progress or Progress()
    out_dir = Path(out_dir)
    names = [f"case_{index:03d}" for index in range(n_cases)]
    with atomic_output_dir(out_dir) as staging:
        for index, name in enumerate(names):
            progress.update("phantom", index / n_cases)
            case = generate_case(case_seed(seed, index), config, shape=shape)
            case.info.update({"case_index": index, "base_seed": int(seed), "patient_id": f"PHANTOM-{seed}-{index:03d}"})
            _write_case(case, staging / name, dicom)
        progress.update("phantom", 1.0)
    return [out_dir / name for name in names]


def read_case(folder: str | os.PathLike) -> PhantomCase:
    """Read a case folder written by :func:`write_cases` back into a :class:`PhantomCase`."""
    folder = Path(folder)
    missing = [name for name in ("pre.nii.gz", "post.nii.gz", "breast.nii.gz", "lesions.nii.gz", "case.json")
               if not (folder / name).is_file()]
    if missing:
        raise InputError(f"not a phantom case folder: {', '.join(missing)} missing", folder)
    info = json.loads((folder / "case.json").read_text())
    posts = [sitk.ReadImage(str(folder / "post.nii.gz"))]
    posts += [sitk.ReadImage(str(folder / f"post{phase}.nii.gz")) for phase in range(2, info["post_phases"] + 1)]
    return PhantomCase(pre=sitk.ReadImage(str(folder / "pre.nii.gz")), posts=posts,
                       breast=sitk.ReadImage(str(folder / "breast.nii.gz")),
                       lesions=sitk.ReadImage(str(folder / "lesions.nii.gz")), info=info)


def _write_case(case: PhantomCase, folder: Path, dicom: bool) -> None:
    folder.mkdir(parents=True)
    images = {"pre": case.pre, "breast": case.breast, "lesions": case.lesions}
    images.update({"post" if phase == 0 else f"post{phase + 1}": image for phase, image in enumerate(case.posts)})
    for name, image in images.items():
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"), useCompression=True)
    (folder / "case.json").write_text(json.dumps(case.info, indent=2) + "\n")
    if dicom:
        write_dce_study(folder / "dicom", [case.pre, *case.posts], convention=case.info["dicom_convention"],
                        patient_id=case.info["patient_id"], seed=case.info["seed"], extras=case.info["dicom_extras"])
