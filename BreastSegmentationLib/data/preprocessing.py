"""Canonical preprocessing, shared by training and inference so that a model always sees data prepared alike.

A case becomes: RAS orientation (seed 000), post-contrast on the pre-contrast grid, optional in-plane resampling
that keeps the slice spacing, intensity normalisation with the statistics of the pre-contrast body voxels applied
to every channel (so contrast enhancement survives: the lesion stays brighter in post than in pre), optional
histogram equalisation and an optional subtraction channel (post - pre). :func:`restore_to_original` maps a
prediction on the prepared grid back onto the original image's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from monai.transforms import HistogramNormalize
from scipy import ndimage

from ..errors import InputError
from ..io.images import (
    align_post_to_pre,
    binary_mask,
    check_mask,
    read_image,
    read_volume,
    reorient_to_ras,
    resample_like,
    same_geometry,
)
from ..progress import Progress, silent

if TYPE_CHECKING:
    from .datasets import CaseRecord

NORMALISATIONS = ("zscore_body", "percentile", "none")
#: Number of histogram bins of the equalisation option.
EQUALISATION_BINS = 256


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case is prepared; stored in model cards so inference repeats it exactly.

    - ``spacing_mm``: target in-plane spacing (x, y) in mm, or None to keep the acquired one; slices are kept.
    - ``normalisation``: "zscore_body" (mean/std of the pre-contrast body voxels), "percentile" (the
      ``clip_percentiles`` of the pre-contrast body voxels mapped to 0 and 1) or "none".
    - ``clip_percentiles``: each channel is first clipped to its own body percentiles (not with "none").
    - ``clahe``: histogram equalisation after normalisation. MONAI's ``HistogramNormalize`` is global, not tile-wise
      like true CLAHE; one mapping from the pooled body voxels of all channels is applied to every channel, so it
      is monotone across channels and keeps enhancement ordering.
    - ``subtraction``: add a post - pre channel.
    - ``body_threshold``: intensity above which a pre-contrast voxel is body, or None for Otsu's threshold.
    """

    spacing_mm: tuple[float, float] | None = None
    normalisation: str = "zscore_body"
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    clahe: bool = False
    subtraction: bool = False
    body_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise InputError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}")
        if self.spacing_mm is not None and (len(self.spacing_mm) != 2 or min(self.spacing_mm) <= 0):
            raise InputError(f"in-plane spacing must be two positive numbers (x, y) in mm, got {self.spacing_mm}")
        if self.clip_percentiles is not None:
            low, high = self.clip_percentiles
            if not 0.0 <= low < high <= 100.0:
                raise InputError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")

    @property
    def channels(self) -> tuple[str, ...]:
        return ("pre", "post", "subtraction") if self.subtraction else ("pre", "post")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessConfig:
        values = dict(values)
        for key in ("spacing_mm", "clip_percentiles"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


@dataclass(frozen=True)
class Grid:
    """A 3-D grid in SimpleITK terms (x, y, z order): enough to put an array back into physical space."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def image(self, array_zyx: np.ndarray) -> sitk.Image:
        """A SimpleITK image of ``array_zyx`` (shape (z, y, x)) on this grid."""
        if tuple(np.shape(array_zyx)) != tuple(reversed(self.size)):
            raise ValueError(f"array of shape {np.shape(array_zyx)} does not fit a grid of size {self.size} (x, y, z)")
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def reference(self) -> sitk.Image:
        """An empty UInt8 image on this grid, to resample onto."""
        return self.image(np.zeros(tuple(reversed(self.size)), dtype=np.uint8))


@dataclass
class PreparedCase:
    """A case ready for a network: channels (C, z, y, x) float32, masks (z, y, x) uint8, all on ``grid``."""

    case_id: str
    patient_id: str
    image: np.ndarray
    channels: tuple[str, ...]
    grid: Grid
    breast: np.ndarray | None = None
    lesions: np.ndarray | None = None
    statistics: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])

    @property
    def spacing_yx(self) -> tuple[float, float]:
        """Row and column spacing in mm (the in-plane spacing in array order)."""
        return self.grid.spacing[1], self.grid.spacing[0]


def inplane_grid(image: sitk.Image, spacing_xy: Sequence[float]) -> Grid:
    """The grid covering ``image`` with in-plane spacing ``spacing_xy`` and the same slices.

    The outer edge of the first voxel stays where it was (as nnU-Net's and scikit-image's resizing do), so the field
    of view is kept and the grid does not drift by half a voxel.
    """
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    new_spacing = np.array([spacing_xy[0], spacing_xy[1], old_spacing[2]], dtype=float)
    size = np.maximum(1, np.round(np.asarray(image.GetSize()) * old_spacing / new_spacing)).astype(int)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float) + direction @ ((new_spacing - old_spacing) / 2.0)
    return Grid(tuple(int(value) for value in size), tuple(float(value) for value in new_spacing),
                tuple(float(value) for value in origin), image.GetDirection())


def _array_on_grid(image: sitk.Image, grid: Grid, is_mask: bool) -> np.ndarray:
    """``image`` (any orientation) as a (z, y, x) array on ``grid``: a copy when it already lies there."""
    reoriented = reorient_to_ras(image)
    reference = grid.reference()
    if not same_geometry(reoriented, reference):
        reoriented = resample_like(reoriented, reference, is_mask=is_mask)
    return sitk.GetArrayFromImage(reoriented)


def body_mask(pre_zyx: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Body voxels of a pre-contrast volume: above ``threshold`` (or Otsu's), holes filled slice by slice.

    Otsu is taken on log intensities: air noise then falls on one side and all tissue, including the dark fat of
    fat-saturated series, on the other; filling holes adds what is enclosed by tissue.
    """
    pre = np.asarray(pre_zyx, dtype=np.float32)
    if threshold is None:
        log_pre = sitk.GetImageFromArray(np.log1p(np.clip(pre, 0.0, None)))
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.Execute(log_pre)
        threshold = float(np.expm1(otsu.GetThreshold()))
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(pre > threshold, structure=in_plane)


def _clip_to_percentiles(values: np.ndarray, body: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    low, high = np.percentile(values[body], percentiles)
    return np.clip(values, low, high)


def normalise(pre: np.ndarray, post: np.ndarray, body: np.ndarray,
              config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Clip each channel to its body percentiles, then shift and scale both with the pre-contrast body statistics.

    Returns the two arrays and the offset and scale used (recorded with the prepared case).
    """
    if config.normalisation == "none":
        return pre, post, {"offset": 0.0, "scale": 1.0}
    if config.clip_percentiles is not None:
        pre = _clip_to_percentiles(pre, body, config.clip_percentiles)
        post = _clip_to_percentiles(post, body, config.clip_percentiles)
    reference = pre[body].astype(np.float64)
    if config.normalisation == "zscore_body":
        offset, scale = float(reference.mean()), float(reference.std())
    else:
        low, high = np.percentile(reference, config.clip_percentiles or (0.0, 100.0))
        offset, scale = float(low), float(high - low)
    if scale <= 0.0:
        raise InputError("the pre-contrast image is constant inside the body: it cannot be normalised")
    return (pre - offset) / scale, (post - offset) / scale, {"offset": offset, "scale": scale}


def equalise_jointly(channels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Global histogram equalisation (MONAI) with one mapping, learnt on the body voxels of all channels."""
    equalise = HistogramNormalize(num_bins=EQUALISATION_BINS, min=0, max=1)
    return np.asarray(equalise(channels, mask=np.broadcast_to(body, channels.shape)), dtype=np.float32)


def prepare_case(pre: sitk.Image, post: sitk.Image, breast: sitk.Image | None = None,
                 lesions: sitk.Image | None = None, config: PreprocessConfig | None = None,
                 case_id: str = "case", patient_id: str | None = None) -> PreparedCase:
    """Prepare one case (see the module docstring); masks are made binary and put on the same grid (nearest)."""
    config = config or PreprocessConfig()
    pre = sitk.Cast(pre, sitk.sitkFloat32)
    post = sitk.Cast(align_post_to_pre(pre, post, "the pre-contrast image", "the post-contrast image"),
                     sitk.sitkFloat32)
    pre_ras = reorient_to_ras(pre)
    grid = Grid.of(pre_ras) if config.spacing_mm is None else inplane_grid(pre_ras, config.spacing_mm)
    pre_array = _array_on_grid(pre, grid, is_mask=False)
    post_array = _array_on_grid(post, grid, is_mask=False)
    body = body_mask(pre_array, config.body_threshold)
    if not body.any():
        raise InputError(f"case {case_id}: no body voxels found in the pre-contrast image (is it blank?)")
    pre_array, post_array, statistics = normalise(pre_array, post_array, body, config)
    channels = np.stack([pre_array, post_array]).astype(np.float32)
    if config.clahe:
        channels = equalise_jointly(channels, body)
    if config.subtraction:
        channels = np.concatenate([channels, channels[1:2] - channels[0:1]])
    masks = {name: None if mask is None else _array_on_grid(binary_mask(mask), grid, is_mask=True)
             for name, mask in (("breast", breast), ("lesions", lesions))}
    return PreparedCase(case_id, patient_id or case_id, np.ascontiguousarray(channels), config.channels, grid,
                        masks["breast"], masks["lesions"], statistics)


def select_channels(case: PreparedCase, inputs: Sequence[str]) -> PreparedCase:
    """The case with only the channels a model takes, in the model's order (training and inference alike)."""
    missing = [name for name in inputs if name not in case.channels]
    if missing:
        raise InputError(f"inputs {missing} are not made by the preprocessing (it makes {list(case.channels)}); "
                         "set preprocessing.subtraction to true for a subtraction channel")
    image = case.image[[case.channels.index(name) for name in inputs]]
    return replace(case, image=np.ascontiguousarray(image), channels=tuple(inputs))


def prepare_record(record: CaseRecord, config: PreprocessConfig | None = None,
                   masks: Sequence[str] = ("breast", "lesions")) -> PreparedCase:
    """Read a dataset case and prepare it; only the masks named in ``masks`` are read."""
    images = {"pre": read_volume(record.pre, "pre-contrast image"),
              "post": read_volume(record.post, "post-contrast image")}
    for name in masks:
        path = getattr(record, name)
        images[name] = None if path is None else check_mask(read_image(path), f"{name} mask", path)
    return prepare_case(images["pre"], images["post"], images.get("breast"), images.get("lesions"), config,
                        record.case_id, record.patient_id)


def prepare_records(records: Sequence[CaseRecord], config: PreprocessConfig | None = None,
                    masks: Sequence[str] = ("breast", "lesions"),
                    progress: Progress | None = None) -> list[PreparedCase]:
    """Prepare every case of a dataset (held in memory by the slice and patch datasets)."""
    progress = progress or silent()
    return [prepare_record(record, config, masks) for record in progress.track(records, "preparing cases")]


def restore_to_original(prediction: np.ndarray, prepared: PreparedCase, original_reference: sitk.Image,
                        is_mask: bool | None = None) -> sitk.Image:
    """Map a (z, y, x) prediction on the prepared grid onto ``original_reference``'s grid.

    Resampling in physical space undoes both the reorientation and the in-plane resampling: nearest neighbour for
    masks (integer or boolean arrays unless ``is_mask`` says otherwise), linear for probabilities.
    """
    array = np.asarray(prediction)
    if is_mask is None:
        is_mask = array.dtype == bool or np.issubdtype(array.dtype, np.integer)
    image = prepared.grid.image(array.astype(np.uint8) if is_mask else array.astype(np.float32))
    return resample_like(image, original_reference, is_mask=is_mask)
