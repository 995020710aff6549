"""Canonical preprocessing, shared by training and inference so that a model always sees data prepared alike.

A case becomes: RAS orientation (seed 000), post-contrast on the pre-contrast grid, optional in-plane resampling
that keeps the slice spacing, intensity normalisation with the statistics of the pre-contrast body voxels applied
to every channel (so contrast enhancement survives: the lesion stays brighter in post than in pre), optional
histogram equalisation, an optional subtraction channel (post - pre) and an optional relative-enhancement channel
((post - pre) / pre, free of scanner units and receive-coil bias). Once a breast mask is known, the enhancement in
excess of the study's own background parenchymal enhancement can be derived from it (:func:`select_channels`).
:func:`restore_to_original` maps a prediction on the prepared grid back onto the original image's grid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import HistogramNormalize
from scipy import ndimage

from ..errors import InputError
from ..io.images import (
    align_post_to_pre,
    as_float32,
    binary_mask,
    bounding_box,
    otsu_threshold,
    reorient_to_ras,
    resample_like,
    same_geometry,
)
from ..progress import Progress

from .datasets import CaseRecord, read_checked

if TYPE_CHECKING:
    from .crops import CropBox

NORMALISATIONS = ("zscore_body", "percentile", "none")
#: Channels the preprocessing can make. A model input names one, optionally read from a neighbouring slice:
#: "subtraction@-1" is the subtraction of the slice below (2.5-D context, which tells a vessel crossing the slice
#: from a lesion inside it).
#: "excess" is not stored: :func:`channel_stack` derives it from "enhancement" and a breast mask.
CHANNELS = ("pre", "post", "subtraction", "enhancement", "excess")
_INPUT_NAME = re.compile(r"(?P<channel>pre|post|subtraction|enhancement|excess)(@(?P<offset>[+-][1-9]))?")
#: Neighbouring-slice inputs read slices at least this far away (mm): on slices thinner than that, "@-1" steps over
#: as many slices as it takes (:func:`neighbour_step`), so that the 2.5-D context spans as much anatomy as on the
#: 1-3 mm slices the bundled models learnt from. Read one thin slice away, every enhancing vessel looks as wide
#: above and below as in the slice, as a lesion does: the bundled lesion networks' false positives multiplied on
#: studies resampled to 0.8 mm slices and on sagittal acquisitions (seen axially, 0.8 mm apart).
MIN_NEIGHBOUR_MM = 1.0
#: The enhancement channel divides by max(pre, floor), floor = this fraction of the pre-contrast body's upper clip
#: percentile: about half the signal of glandular tissue, so that air and suppressed fat do not divide noise by
#: almost nothing, while lesions and gland keep their true ratio.
ENHANCEMENT_FLOOR_FRACTION = 0.2
#: The enhancement channel is clipped to this range (a fraction: 1 = 100 % enhancement).
ENHANCEMENT_RANGE = (-1.0, 4.0)
#: Swapped phases are refused when, in the body, the post-contrast signal falls further than this many times as far as
#: it rises (1st against 99th percentile of post - pre). Uptake (heart, vessels, gland, lesions) makes the rise the
#: larger tail of every DCE study, noise and motion edges give both tails alike: on 60 phantom studies (seeds
#: 3000-3059) the fall reached 0.01-0.14 of the rise, and 8-81 times it with the phases swapped.
SWAPPED_PHASES_RATIO = 3.0
#: Number of histogram bins of the equalisation option.
EQUALISATION_BINS = 256
#: Intensity statistics are taken on every STATISTICS_STRIDE-th slice, row and column (:func:`intensity_statistics`).
STATISTICS_STRIDE = 2


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
    - ``enhancement``: add a relative-enhancement channel, (post - pre) / max(pre, floor) (see
      :func:`enhancement_channel`); needs ``clip_percentiles`` and a normalisation other than "none".
    - ``body_threshold``: intensity above which a pre-contrast voxel is body, or None for Otsu's threshold.
    """

    spacing_mm: tuple[float, float] | None = None
    normalisation: str = "zscore_body"
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    clahe: bool = False
    subtraction: bool = False
    body_threshold: float | None = None
    enhancement: bool = False

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise InputError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}")
        if self.spacing_mm is not None and (len(self.spacing_mm) != 2 or min(self.spacing_mm) <= 0):
            raise InputError(f"in-plane spacing must be two positive numbers (x, y) in mm, got {self.spacing_mm}")
        if self.clip_percentiles is not None:
            low, high = self.clip_percentiles
            if not 0.0 <= low < high <= 100.0:
                raise InputError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")
        if self.enhancement and (self.clip_percentiles is None or self.normalisation == "none"):
            raise InputError("the enhancement channel needs clip_percentiles and a normalisation other than 'none' "
                             "(its floor is a share of the pre-contrast body's upper percentile)")

    @property
    def channels(self) -> tuple[str, ...]:
        return ("pre", "post") + ("subtraction",) * self.subtraction + ("enhancement",) * self.enhancement

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def intensity_settings(self) -> tuple:
        """What the intensity statistics depend on: preparations with equal settings can share them."""
        return self.normalisation, self.clip_percentiles, self.body_threshold

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

    def sub_grid(self, box: CropBox) -> Grid:
        """The grid of ``box`` (z, y, x index ranges) of this grid: same spacing and direction, moved origin."""
        start_xyz = np.array([box.cols[0], box.rows[0], box.slices[0]], dtype=float)
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        origin = np.asarray(self.origin, dtype=float) + direction @ (start_xyz * np.asarray(self.spacing))
        return Grid(tuple(reversed(box.shape)), self.spacing, tuple(float(v) for v in origin), self.direction)


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
    statistics: IntensityStatistics | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])

    @property
    def spacing_yx(self) -> tuple[float, float]:
        """Row and column spacing in mm (the in-plane spacing in array order)."""
        return self.grid.spacing[1], self.grid.spacing[0]

    def cropped(self, box: CropBox) -> PreparedCase:
        """The part of the case inside ``box``, on its own grid (so predictions on it still map to physical space);
        copies, so that the whole case's arrays can be freed (training keeps only crops)."""
        masks = {name: None if mask is None else np.ascontiguousarray(box.apply(mask))
                 for name, mask in (("breast", self.breast), ("lesions", self.lesions))}
        return replace(self, image=np.ascontiguousarray(box.apply(self.image)), grid=self.grid.sub_grid(box), **masks)


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


def _on_grid(image: sitk.Image, grid: Grid, is_mask: bool) -> sitk.Image:
    """``image`` itself when it already lies on ``grid``, else resampled onto it."""
    reference = grid.reference()
    return image if same_geometry(image, reference) else resample_like(image, reference, is_mask=is_mask)


def image_on_grid(image: sitk.Image, grid: Grid) -> np.ndarray:
    """The (z, y, x) values of ``image`` linearly interpolated onto ``grid`` (a view when it already lies on it).

    When ``grid`` is :func:`inplane_grid` of ``image`` (the preprocessing's own case), each slice is resized with
    torch's bilinear interpolation at the exact ratio of the spacings: the same points and the same values as
    SimpleITK's resampling (both repeat the edge voxels out to the outer edge), to float rounding, in a tenth of the
    time. MONAI's Zoom and Resize derive the ratio from the rounded output size instead, which moves the grid by up
    to half a voxel.
    """
    if Grid.of(image) == grid:
        return sitk.GetArrayViewFromImage(image)
    if grid != inplane_grid(image, grid.spacing[:2]):
        return sitk.GetArrayFromImage(resample_like(image, grid.reference()))
    factors = [old / new for old, new in zip(image.GetSpacing()[1::-1], grid.spacing[1::-1])]  # rows, columns
    slices = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))[:, None]
    # The output is floor(size x factor) long: the last row or column, which rounding may add, reads padding that
    # repeats the edge, as both interpolations do beyond the last voxel centre.
    missing = [wanted - int(size * factor) for wanted, size, factor in
               zip((grid.size[1], grid.size[0]), slices.shape[2:], factors)]
    if any(count > 0 for count in missing):
        extra = [math.ceil(count / factor) for count, factor in zip(missing, factors)]
        slices = torch.nn.functional.pad(slices, (0, max(extra[1], 0), 0, max(extra[0], 0)), mode="replicate")
    resized = torch.nn.functional.interpolate(slices, scale_factor=factors, mode="bilinear", align_corners=False,
                                              recompute_scale_factor=False)
    return resized[:, 0, :grid.size[1], :grid.size[0]].numpy()


def body_threshold(pre_zyx: np.ndarray) -> float:
    """Otsu's threshold between air and body, taken on log intensities: air noise then falls on one side and all
    tissue, including the dark fat of fat-saturated series, on the other."""
    return float(np.expm1(otsu_threshold(np.log1p(np.clip(np.asarray(pre_zyx, dtype=np.float32), 0.0, None)))))


def body_mask(pre_zyx: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Body voxels of a pre-contrast volume: above ``threshold`` (or Otsu's), holes filled slice by slice."""
    pre = np.asarray(pre_zyx, dtype=np.float32)
    threshold = body_threshold(pre) if threshold is None else threshold
    return fill_holes_per_slice(pre > threshold)


def fill_holes_per_slice(mask_zyx: np.ndarray) -> np.ndarray:
    """A boolean copy of ``mask_zyx`` with the holes of each axial slice filled.

    A hole is background that no 4-connected path within its slice leads out of. The background inside the mask's
    bounding box is labelled once for all slices (in-plane connectivity only), and the regions that reach a side of
    the box, and so the outside, are kept: the same result as scipy's binary_fill_holes slice by slice, in a quarter
    of the time (its repeated dilations sweep the volume many times).
    """
    mask = np.asarray(mask_zyx) > 0
    if not mask.any():
        return mask
    box = bounding_box(mask)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    regions, count = ndimage.label(~mask[box], structure=in_plane)
    open_to_outside = np.zeros(count + 1, dtype=bool)
    for side in (regions[:, 0], regions[:, -1], regions[:, :, 0], regions[:, :, -1]):
        open_to_outside[side] = True
    open_to_outside[0] = True  # label 0 is the mask itself
    mask[box] |= ~open_to_outside[regions]
    return mask


@dataclass(frozen=True)
class IntensityStatistics:
    """How a study's intensities are normalised: each phase clipped to its range, then (x - offset) / scale."""

    offset: float
    scale: float
    body_threshold: float
    pre_range: tuple[float, float] | None = None
    post_range: tuple[float, float] | None = None


def intensity_statistics(pre_zyx: np.ndarray, post_zyx: np.ndarray, config: PreprocessConfig,
                         case_id: str = "") -> IntensityStatistics:
    """Statistics of the pre-contrast body voxels of the volumes as acquired (post on the pre grid).

    They are taken on every ``STATISTICS_STRIDE``-th slice, row and column: on 7 phantom studies the mean, deviation
    and percentiles of this eighth of the voxels stayed within 0.4 % (of a deviation; of the range for percentiles)
    of those of every voxel, in an eighth of the time. Since they do not depend on a model's grid, every model run
    on a study shares them.
    """
    sampled = (slice(None, None, STATISTICS_STRIDE),) * 3
    pre = np.asarray(pre_zyx[sampled], dtype=np.float32)
    post = np.asarray(post_zyx[sampled], dtype=np.float32)
    threshold = body_threshold(pre) if config.body_threshold is None else float(config.body_threshold)
    body = body_mask(pre, threshold)
    if not body.any():
        raise InputError(f"{case_prefix(case_id)}no body voxels found in the pre-contrast image (is it blank?)")
    pre_body, post_body = pre[body], post[body]
    check_post_enhances(pre_body, post_body, case_id)
    if config.normalisation == "none":
        return IntensityStatistics(0.0, 1.0, threshold)
    pre_body, post_body = pre_body.astype(np.float64), post_body.astype(np.float64)
    ranges = [None, None]
    if config.clip_percentiles is not None:
        ranges = [tuple(float(v) for v in np.percentile(values, config.clip_percentiles))
                  for values in (pre_body, post_body)]
        pre_body = np.clip(pre_body, *ranges[0])
    if config.normalisation == "zscore_body":
        offset, scale = float(pre_body.mean()), float(pre_body.std())
    else:
        low, high = np.percentile(pre_body, config.clip_percentiles or (0.0, 100.0))
        offset, scale = float(low), float(high - low)
    if scale <= 0.0:
        raise InputError(f"{case_prefix(case_id)}the pre-contrast image is constant inside the body: it cannot be "
                         "normalised")
    return IntensityStatistics(offset, scale, threshold, *ranges)


def case_prefix(case_id: str) -> str:
    """The start of a message about a dataset's case ("case ID: "); empty for an unnamed one, a study being segmented,
    whose messages the command or module already places."""
    return f"case {case_id}: " if case_id else ""


def check_post_enhances(pre_body: np.ndarray, post_body: np.ndarray, case_id: str = "") -> None:
    """Refuse phases given the wrong way round: after contrast, signal rises (:data:`SWAPPED_PHASES_RATIO`)."""
    fall, rise = np.percentile(post_body - pre_body, (1.0, 99.0))
    if -fall > SWAPPED_PHASES_RATIO * max(float(rise), 0.0):
        raise InputError(f"{case_prefix(case_id)}the post-contrast image is darker than the pre-contrast one where "
                         f"tissue enhances (its signal falls by up to {-fall:.4g} and rises by at most "
                         f"{max(rise, 0.0):.4g}): are pre and post swapped, or is the post-contrast image a "
                         "subtraction?")


def normalise(phases: np.ndarray, statistics: IntensityStatistics) -> None:
    """In place on (pre, post) stacked: clip each phase to its range, then shift and scale both with the
    pre-contrast body statistics (one mapping for both, so contrast enhancement survives)."""
    if statistics.pre_range is not None:
        np.clip(phases[0], *statistics.pre_range, out=phases[0])
        np.clip(phases[1], *statistics.post_range, out=phases[1])
    phases -= statistics.offset
    phases /= statistics.scale


def enhancement_channel(phases: np.ndarray, statistics: IntensityStatistics, out: np.ndarray) -> None:
    """Into ``out``: (post - pre) / max(pre, floor) of raw (pre, post) stacked, clipped to :data:`ENHANCEMENT_RANGE`.

    The clinical relative enhancement as a fraction. Scanner units and the receive coil's multiplicative bias field
    cancel in it, whereas the subtraction keeps both, so a weakly enhancing lesion on a scanner with low signal
    looks the same as on any other. (The lesion table's enhancement, in evaluation.lesions, uses a tiny floor
    instead: it reports values, this one feeds a network and must not amplify noise.)
    """
    clipped_enhancement(phases[0], phases[1] - phases[0], ENHANCEMENT_FLOOR_FRACTION * statistics.pre_range[1], out)


def clipped_enhancement(pre: np.ndarray, uptake: np.ndarray, floor: float,
                        out: np.ndarray | None = None) -> np.ndarray:
    """``uptake`` (post - pre) / max(``pre``, ``floor``), clipped to :data:`ENHANCEMENT_RANGE` (into ``out`` when
    given): the relative enhancement the models see, here and in the foci search."""
    out = np.maximum(pre, floor, out=out)
    np.divide(uptake, out, out=out)
    return np.clip(out, *ENHANCEMENT_RANGE, out=out)


def equalise_jointly(channels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Global histogram equalisation (MONAI) with one mapping, learnt on the body voxels of all channels."""
    equalise = HistogramNormalize(num_bins=EQUALISATION_BINS, min=0, max=1)
    return np.asarray(equalise(channels, mask=np.broadcast_to(body, channels.shape)), dtype=np.float32)


def model_grid(image: sitk.Image, config: PreprocessConfig) -> Grid:
    """The grid a model with ``config`` sees a (RAS-ordered) study on: the study's own, or its in-plane resampling."""
    return Grid.of(image) if config.spacing_mm is None else inplane_grid(image, config.spacing_mm)


def prepare_case(pre: sitk.Image, post: sitk.Image, breast: sitk.Image | None = None,
                 lesions: sitk.Image | None = None, config: PreprocessConfig | None = None,
                 case_id: str = "case", patient_id: str | None = None,
                 statistics: IntensityStatistics | None = None) -> PreparedCase:
    """Prepare one case (see the module docstring); masks are made binary and put on the same grid (nearest).

    ``statistics`` (from another preparation of the same study with the same intensity settings) saves computing
    them again.
    """
    config = config or PreprocessConfig()
    pre = as_float32(pre)
    post = as_float32(align_post_to_pre(pre, post, "the pre-contrast image", "the post-contrast image"))
    pre_ras, post_ras = reorient_to_ras(pre), reorient_to_ras(post)
    if statistics is None:
        statistics = intensity_statistics(sitk.GetArrayViewFromImage(pre_ras), sitk.GetArrayViewFromImage(post_ras),
                                          config, case_id)
    grid = model_grid(pre_ras, config)
    # One array for every channel, filled in place: these volumes are the largest copies of the whole job.
    channels = np.empty((len(config.channels), *reversed(grid.size)), dtype=np.float32)
    for index, image in enumerate((pre_ras, post_ras)):
        channels[index] = image_on_grid(image, grid)
    if config.enhancement:
        enhancement_channel(channels[:2], statistics, out=channels[config.channels.index("enhancement")])
    body = body_mask(channels[0], statistics.body_threshold) if config.clahe else None
    normalise(channels[:2], statistics)
    if config.clahe:
        channels[:2] = equalise_jointly(channels[:2], body)
    if config.subtraction:
        np.subtract(channels[1], channels[0], out=channels[2])
    masks = {name: None if mask is None else
             sitk.GetArrayFromImage(_on_grid(reorient_to_ras(binary_mask(mask)), grid, is_mask=True))
             for name, mask in (("breast", breast), ("lesions", lesions))}
    return PreparedCase(case_id, patient_id or case_id, channels, config.channels, grid, masks["breast"],
                        masks["lesions"], statistics)


def parse_input(name: str) -> tuple[str, int]:
    """A model input's channel and slice offset: "subtraction@-1" -> ("subtraction", -1), "post" -> ("post", 0)."""
    match = _INPUT_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise InputError(f"unknown input {name!r}: use one of {', '.join(CHANNELS)}, optionally with a slice offset "
                         "such as 'subtraction@-1'")
    return match["channel"], int(match["offset"] or 0)


def neighbour_step(slice_spacing_mm: float) -> int:
    """Slices per step of a neighbouring-slice input: 1 on slices of :data:`MIN_NEIGHBOUR_MM` or more, enough
    slices to span it on thinner ones."""
    return max(1, math.ceil(MIN_NEIGHBOUR_MM / slice_spacing_mm - 1e-6))


def _neighbour_slices(slices: tuple[int, int], offset: int, depth: int) -> slice | np.ndarray:
    """Indices of the slices ``offset`` away from ``slices`` in a volume of ``depth`` slices, the edge slices standing
    in beyond the ends: a plain slice (a view) unless an end is reached."""
    start, stop = slices[0] + offset, slices[1] + offset
    if start >= 0 and stop <= depth:
        return slice(start, stop)
    return np.clip(np.arange(start, stop), 0, depth - 1)


def background_enhancement(pre: np.ndarray, enhancement: np.ndarray, breast: np.ndarray) -> float:
    """The study's background parenchymal enhancement (BPE): the median enhancement of its fibroglandular tissue.

    Breast voxels are split into two classes by Otsu's threshold on the pre-contrast intensity: fat and
    fibroglandular tissue, in either order (fat is bright without fat saturation and dark with it). Fat barely
    enhances, so the class that enhances more is the gland, and its median is hardly moved by lesions and vessels,
    which are a small share of it. Every breast voxel counts (a median of millions of values takes milliseconds).
    On 16 phantom studies at 1 mm it follows the drawn BPE level (correlation 0.90, slope 0.97); on grids much
    coarser than the gland's strands, partial volume mixes gland into fat and the estimate falls towards zero.
    Hand-written: neither MONAI nor SimpleITK estimates BPE.
    """
    inside = np.asarray(breast) > 0
    if not inside.any():
        raise InputError("no breast voxels: the background parenchymal enhancement cannot be measured")
    pre_values = np.asarray(pre[inside], dtype=np.float32)
    enhancement_values = enhancement[inside]
    brighter = pre_values > otsu_threshold(pre_values)
    return float(max(np.median(enhancement_values[part]) for part in (brighter, ~brighter) if part.any()))


def study_background(case: PreparedCase, breast: np.ndarray | None = None) -> float:
    """The background parenchymal enhancement of a prepared study with an enhancement channel, measured on the
    whole of ``breast`` (on the case's grid; by default the case's own mask)."""
    breast = case.breast if breast is None else breast
    if breast is None:
        raise InputError(f"case {case.case_id}: the 'excess' input needs a breast mask to measure the background "
                         "parenchymal enhancement on")
    channel = case.channels.index
    return background_enhancement(case.image[channel("pre")], case.image[channel("enhancement")], breast)


def uses_excess(inputs: Sequence[str]) -> bool:
    """Whether a model's inputs include the derived "excess" channel (which needs the study's BPE)."""
    return any(parse_input(name)[0] == "excess" for name in inputs)


def channel_stack(case: PreparedCase, inputs: Sequence[str], box: CropBox | None = None,
                  mask: np.ndarray | None = None, background: float | None = None) -> np.ndarray:
    """A model's ``inputs`` as one (C, z, y, x) array inside ``box`` (default: the whole case), optionally multiplied
    by ``mask`` (the box's shape).

    Neighbouring-slice inputs read the whole case, so a box's first slice sees the real slice below it, and step
    over :func:`neighbour_step` slices at a time. "excess" is the enhancement minus ``background``, the study's BPE.
    Each channel is written once, straight from the stored channels into the new array: the lesion model's input is
    the largest array of an inference run.
    """
    rows, cols = (box.rows, box.cols) if box is not None else ((0, case.shape[1]), (0, case.shape[2]))
    slices = box.slices if box is not None else (0, case.shape[0])
    parsed = [parse_input(name) for name in inputs]
    step = neighbour_step(case.grid.spacing[2])
    stack = np.empty((len(parsed), slices[1] - slices[0], rows[1] - rows[0], cols[1] - cols[0]),
                     dtype=case.image.dtype)
    for index, (channel, offset) in enumerate(parsed):
        source = case.image[case.channels.index("enhancement" if channel == "excess" else channel)]
        part = source[_neighbour_slices(slices, offset * step, case.shape[0]), slice(*rows), slice(*cols)]
        if channel == "excess":
            np.subtract(part, np.float32(background), out=stack[index])
            part = stack[index]
        if mask is None:
            stack[index] = part
        else:
            np.multiply(part, mask, out=stack[index])
    return stack


def select_channels(case: PreparedCase, inputs: Sequence[str], background: float | None = None) -> PreparedCase:
    """The case with only the channels a model takes, in the model's order (training and inference alike).

    ``background`` is the study's BPE for the derived "excess" input (:func:`study_background`); by default it is
    measured on the case's own breast mask, which a crop of the case may cut.
    """
    check_inputs(case, inputs)
    if tuple(inputs) == case.channels:
        return case
    if uses_excess(inputs) and background is None:
        background = study_background(case)
    return replace(case, image=channel_stack(case, inputs, background=background), channels=tuple(inputs))


def check_inputs(case: PreparedCase, inputs: Sequence[str]) -> None:
    """Refuse model inputs whose channels the case's preprocessing did not make."""
    stored = {"enhancement" if channel == "excess" else channel for channel, _ in map(parse_input, inputs)}
    missing = sorted(stored - set(case.channels))
    if missing:
        raise InputError(f"inputs {missing} are not made by the preprocessing (it makes {list(case.channels)}); "
                         "set preprocessing.subtraction (or .enhancement, also for 'excess') to true for that channel")


def prepare_checked(records: Sequence[CaseRecord], task: str, config: PreprocessConfig | None = None,
                    masks: Sequence[str] = ("breast", "lesions"), min_patients: int = 1,
                    progress: Progress | None = None,
                    view: Callable[[PreparedCase], PreparedCase] | None = None) -> list[PreparedCase]:
    """Check a dataset and prepare it, reading each file once (:func:`~.datasets.read_checked`).

    Only the masks named in ``masks`` are prepared; ``view`` is applied to each case as soon as it is prepared
    (keeping only what training needs, so that a large dataset fits in memory).
    """
    prepared = []
    for record, images in read_checked(records, task, min_patients, progress):
        case = prepare_case(images["pre"], images["post"], *(images[name] if name in masks else None
                                                            for name in ("breast", "lesions")),
                            config=config, case_id=record.case_id, patient_id=record.patient_id)
        prepared.append(view(case) if view is not None else case)
    return prepared


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
