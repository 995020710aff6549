"""Foci: small enhancing lesions (about 3-7 mm) that the slice-wise lesion network misses, looked for in 3-D.

Why: the lesion network sees a few neighbouring slices, where a focus of two to four slices looks like the
cross-section of an enhancing vessel, and it gives most of them almost no probability
(docs/model-development.md). In 3-D a vessel runs on where a focus ends. So blobs of the subtraction are proposed
(the local maxima of a difference of Gaussians inside the breast, scored robustly against the breast's own texture)
and a small 3-D classifier (MONAI's ``Classifier``) looks at a 32 mm cube around each, sampled at 1 mm. A blob it is
sure of, away from the lesions the network found, is added as a lesion: the voxels around its peak that score above
half the peak's blob score.

Everything here works on (z, y, x) arrays of the study's own grid in LPS order (the order the classifier was
trained in; its training flips every axis, so RAS or other flips read the same) with the grid's (x, y, z) spacing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..data.preprocessing import ENHANCEMENT_FLOOR_FRACTION, clipped_enhancement
from ..errors import InputError
from ..io.images import bounding_box, orientation_code, reorient
from .runtime import in_background

#: Blob scores are robust z-scores of the difference of Gaussians; the breast median and MAD set the scale.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class FocusSearch:
    """How blobs are proposed, cut out and grown (a foci card's ``preprocessing``)."""

    small_sigma_mm: float = 1.0  #: the blob scale
    large_sigma_mm: float = 4.0  #: the background scale subtracted from it
    min_score: float = 10.0  #: blob score a candidate peak must exceed
    peak_window_mm: float = 5.0  #: a peak is the highest score within about this distance
    patch_voxels: int = 32  #: the classifier's cube, in voxels of ``patch_spacing_mm``
    patch_spacing_mm: float = 1.0
    region_radius_mm: float = 6.0  #: a focus reaches at most this far from its peak
    region_fraction: float = 0.5  #: of the peak's blob score that the focus's voxels exceed
    #: A lesion of the lesion model is dropped when the classifier gives less than this to both of its cubes: at its
    #: highest lesion probability and at its highest blob score (None: lesions are kept as they are).
    veto_below: float | None = None
    #: Lesions larger than this are never vetoed (None: no limit). The classifier's cube cannot hold them with their
    #: surroundings: on 96 tuning phantom studies it gave a true lesion of 15 ml, which filled the cube, 0.08, while
    #: no false lesion of the lesion model was larger than 3.8 ml.
    veto_max_mm3: float | None = None
    #: The volume the blob score is taken of: "subtraction", or "enhancement" (:func:`block_enhancement`).
    score_input: str = "subtraction"

    def __post_init__(self) -> None:
        if self.score_input not in SCORE_INPUTS:
            raise InputError(f"a foci card's score_input must be one of {', '.join(SCORE_INPUTS)}; got "
                             f"{self.score_input!r}")

    @classmethod
    def from_dict(cls, data: dict) -> FocusSearch:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


#: The volumes the blob score may be taken of (:attr:`FocusSearch.score_input`).
SCORE_INPUTS = ("subtraction", "enhancement")


def block_enhancement(pre: np.ndarray, subtraction: np.ndarray) -> np.ndarray:
    """The lesion networks' relative enhancement channel (:func:`~..data.preprocessing.clipped_enhancement`) of a
    block, its floor a share of the block's 99.5th percentile of ``pre`` (every second voxel along each axis): the
    search has no body statistics. Bright fat divides out of it: without fat saturation, where fat sets the
    subtraction's noise, a focus in fat stands out more than in the subtraction."""
    floor = ENHANCEMENT_FLOOR_FRACTION * float(np.percentile(pre[::2, ::2, ::2], 99.5))
    return clipped_enhancement(np.asarray(pre, dtype=np.float32), subtraction, max(floor, 1e-6))


def scored_volume(search: FocusSearch, subtraction: np.ndarray, pre: np.ndarray | None,
                  channels: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The volume the search's blob score is taken of (:attr:`FocusSearch.score_input`); taken from ``channels``
    (the cubes' volumes by input name) when they hold it, so that it is not computed twice."""
    if search.score_input == "subtraction":
        return subtraction
    if channels and search.score_input in channels:
        return channels[search.score_input]
    if pre is None:
        raise InputError("a blob score of the relative enhancement needs the study's pre-contrast phase")
    return block_enhancement(pre, subtraction)


def _zyx(spacing_xyz: tuple[float, ...]) -> np.ndarray:
    return np.asarray(spacing_xyz, dtype=float)[::-1]


#: Gaussians reach this many sigmas (scipy's default is 4; the third sigma holds 99.7 % of the weight).
GAUSSIAN_TRUNCATE = 3.0
#: Breast voxels the blob score's median and spread are measured on: every second one along each axis.
STATISTICS_STRIDE = 2


def _gaussian(image: np.ndarray, sigma_mm: float, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """``image`` smoothed by a Gaussian of ``sigma_mm``, a finite separable filter (scipy's): at a sigma of about
    one voxel it is more faithful than a recursive one, and on one thread still three times faster than ITK's
    recursive filter on two."""
    return ndimage.gaussian_filter(image, sigma_mm / _zyx(spacing_xyz), truncate=GAUSSIAN_TRUNCATE)


#: The wide Gaussian is computed on a grid twice as coarse along axes where its sigma stays this many coarse voxels.
COARSE_SIGMA_VOXELS = 1.5


def _wide_gaussian(image: np.ndarray, sigma_mm: float, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """A Gaussian of several voxels, computed on a coarser grid (means of two voxels along each axis where the
    sigma spans :data:`COARSE_SIGMA_VOXELS` coarse voxels) and interpolated back linearly (torch's pooling and
    interpolation, on every thread). It varies slowly: on the benchmark study this costs a third of the time and
    moves the blob score by less than one unit anywhere in the breast."""
    factors = tuple(2 if sigma_mm / (2.0 * s) >= COARSE_SIGMA_VOXELS else 1 for s in _zyx(spacing_xyz))
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    with torch.inference_mode():
        coarse = torch.nn.functional.avg_pool3d(volume, factors, ceil_mode=True, count_include_pad=False)
        smooth = _gaussian(coarse[0, 0].numpy(), sigma_mm, tuple(f * s for f, s in zip(factors[::-1], spacing_xyz)))
        fine = torch.nn.functional.interpolate(torch.from_numpy(smooth)[None, None], scale_factor=factors,
                                               mode="trilinear", align_corners=False)
    return fine[0, 0, :image.shape[0], :image.shape[1], :image.shape[2]].numpy()


def blob_score(subtraction: np.ndarray, breast: np.ndarray, spacing_xyz: tuple[float, ...],
               search: FocusSearch) -> np.ndarray:
    """Difference of Gaussians (sigmas in mm) of the subtraction as a robust z-score over the breast's voxels.

    The two Gaussians run side by side (scipy's filters leave Python's GIL): the small one is single-threaded, and
    on two cores the pair takes two thirds of the time of one after the other."""
    subtraction = np.asarray(subtraction, dtype=np.float32)
    wide = in_background(_wide_gaussian, subtraction, search.large_sigma_mm, spacing_xyz)
    dog = _gaussian(subtraction, search.small_sigma_mm, spacing_xyz)
    dog -= wide.result()
    sampled = (slice(None, None, STATISTICS_STRIDE),) * 3
    values = dog[sampled][breast[sampled]]
    median = np.median(values)
    spread = np.float32(np.median(np.abs(values - median)) * MAD_TO_SIGMA + 1e-6)
    dog -= median
    dog /= spread
    return dog


def window_offsets(spacing_xyz: tuple[float, ...], window_mm: float) -> np.ndarray:
    """(n, 3) (k, j, i) offsets of a box about ``window_mm`` wide: an odd number of voxels, at least 3, per axis."""
    half = [max(3, int(round(window_mm / s)) | 1) // 2 for s in _zyx(spacing_xyz)]
    return np.stack(np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij"), -1).reshape(-1, 3)


def candidate_peaks(score: np.ndarray, breast: np.ndarray, spacing_xyz: tuple[float, ...], search: FocusSearch,
                    min_score: float | None = None) -> np.ndarray:
    """(k, j, i) rows of the local maxima of ``score`` inside the breast above ``min_score`` (the search's): voxels
    whose score no voxel of their ``peak_window_mm`` box exceeds (``maximum_filter(mode="nearest")``'s maxima).

    Why not the maximum filter: only the few voxels above the floor can be peaks, and looking up their
    neighbours costs a tenth of filtering the whole volume. The nearest neighbours are looked up first and each
    voxel a neighbour exceeds is dropped at once: most voxels above the floor lie on a blob's slope.
    """
    floor = search.min_score if min_score is None else min_score
    above = score > floor
    above &= breast
    # flatnonzero and unravel_index: np.argwhere takes twenty times as long on a large mask.
    points = np.stack(np.unravel_index(np.flatnonzero(above), score.shape), axis=-1)
    values = score[tuple(points.T)]
    last = np.array(score.shape) - 1
    offsets = window_offsets(spacing_xyz, search.peak_window_mm)
    for offset in offsets[np.argsort(np.abs(offsets).sum(axis=1), kind="stable")]:
        neighbours = np.clip(points + offset, 0, last)
        is_peak = values >= score[tuple(neighbours.T)]
        points, values = points[is_peak], values[is_peak]
    return points


def breast_scale(volume: np.ndarray, breast: np.ndarray) -> tuple[float, float]:
    """(offset, scale) mapping the breast's median of ``volume`` to 0 and its 99th percentile to 1 (measured on the
    breast voxels of every second voxel along each axis): how each channel of the classifier's cubes is
    normalised."""
    sampled = (slice(None, None, STATISTICS_STRIDE),) * 3
    median, high = np.percentile(volume[sampled][breast[sampled]], (50.0, 99.0))
    return float(median), float(max(high - median, 1e-3))


#: The volumes a foci classifier's cubes may show: a foci card's ``inputs`` name them, in the cubes' channel order.
#: A focus in fat is dark on a pre-contrast image without fat saturation, where the bright fat makes the
#: subtraction's noise.
CUBE_INPUTS = ("subtraction", "pre", "post", "enhancement")


def check_cube_inputs(inputs: Sequence[str], source: object = None) -> None:
    """A clear error unless every one of a foci card's ``inputs`` is one of :data:`CUBE_INPUTS`."""
    unknown = [name for name in inputs if name not in CUBE_INPUTS]
    if unknown:
        raise InputError(f"a foci classifier's inputs must be among {', '.join(CUBE_INPUTS)}; got "
                         f"{', '.join(unknown)}", source)


def cube_volumes(pre: np.ndarray, post: np.ndarray | None, subtraction: np.ndarray,
                 inputs: Sequence[str]) -> list[np.ndarray]:
    """The volumes of a foci card's ``inputs`` (:data:`CUBE_INPUTS`), in their order, from arrays of one grid
    (``post`` may be None when they do not name it)."""
    check_cube_inputs(inputs)
    volumes = {"subtraction": subtraction, "pre": pre, "post": post}
    if "enhancement" in inputs:
        volumes["enhancement"] = block_enhancement(pre, subtraction)
    return [volumes[name] for name in inputs]


#: Cubes are interpolated this many at a time: their source blocks then take some 20 MB.
PATCH_CHUNK = 128


def _linear_weights(step_ratio: float, count: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Linear interpolation onto ``count`` points centred on a voxel, ``step_ratio`` voxels apart: (the points
    relative to the centre, the first source index relative to the centre, weights (count, sources)). The same for
    every integer centre."""
    positions = (np.arange(count) - (count - 1) / 2.0) * step_ratio
    below = np.floor(positions).astype(int)
    first = int(below.min())
    weights = np.zeros((count, int(below.max()) - first + 2), dtype=np.float32)
    rows = np.arange(count)
    weights[rows, below - first] = 1.0 - (positions - below)
    weights[rows, below - first + 1] = positions - below
    return positions, first, weights


def _interpolated(blocks: np.ndarray, along_z: np.ndarray, along_y: np.ndarray, along_x: np.ndarray) -> np.ndarray:
    """(n, z, y, x) ``blocks`` with each axis multiplied by its (points, sources) weights: three matrix products,
    torch's (on every thread; numpy's einsum of the same took four times as long)."""
    with torch.inference_mode():
        cubes = torch.from_numpy(blocks) @ torch.from_numpy(along_x).T
        cubes = torch.from_numpy(along_y) @ cubes
        cubes = torch.einsum("az,nzbc->nabc", torch.from_numpy(along_z), cubes)
    return cubes.numpy()


def patches(subtraction: np.ndarray, peaks: np.ndarray, spacing_xyz: tuple[float, ...], search: FocusSearch,
            offset: float, scale: float) -> np.ndarray:
    """(N, 1, P, P, P) float32 cubes of the normalised subtraction centred on ``peaks``, sampled linearly at
    ``search.patch_spacing_mm`` (outside the volume: the breast median, i.e. 0).

    Trilinear interpolation on a grid of points is three one-dimensional ones, and since peaks lie on voxels, the
    weights are the same for every cube: each cube is its source block times three small matrices, applied to
    :data:`PATCH_CHUNK` blocks at a time. The values are scipy's ``map_coordinates(order=1, mode="constant")``'s to
    float rounding, in a tenth of its time.
    """
    size = search.patch_voxels
    axes = [_linear_weights(search.patch_spacing_mm / step, size) for step in _zyx(spacing_xyz)]
    (_, _, along_z), (_, _, along_y), (_, _, along_x) = axes
    block_shape = np.array([along_z.shape[1], along_y.shape[1], along_x.shape[1]])
    cubes = np.empty((len(peaks), 1) + (size,) * 3, dtype=np.float32)
    for first_peak in range(0, len(peaks), PATCH_CHUNK):
        chunk = peaks[first_peak:first_peak + PATCH_CHUNK]
        blocks = np.zeros((len(chunk), *block_shape), dtype=np.float32)
        for block, peak in zip(blocks, chunk):
            # The source block, cut to the volume (the rest stays 0): padding the whole volume would copy it.
            start = np.asarray(peak, dtype=int) + [first for _, first, _ in axes]
            low, high = np.maximum(start, 0), np.minimum(start + block_shape, subtraction.shape)
            block[tuple(slice(a, b) for a, b in zip(low - start, high - start))] = \
                subtraction[tuple(slice(a, b) for a, b in zip(low, high))]
        # Each point's weights sum to 1, so normalising the cubes equals normalising the volume, at a fraction of it.
        interpolated = _interpolated(blocks, along_z, along_y, along_x)
        cubes[first_peak:first_peak + len(chunk), 0] = (interpolated - offset) / scale
    for cube, peak in zip(cubes[:, 0], peaks):
        # Points beyond the volume's first or last voxel take the outside value, as map_coordinates's "constant".
        outside = [(c + positions < 0) | (c + positions > n - 1)
                   for c, (positions, _, _), n in zip(peak, axes, subtraction.shape)]
        cube[outside[0][:, None, None] | outside[1][:, None] | outside[2]] = 0.0
    return cubes


def channel_cubes(volumes: Sequence[np.ndarray], scales: Sequence[tuple[float, float]], peaks: np.ndarray,
                  spacing_xyz: tuple[float, ...], search: FocusSearch) -> np.ndarray:
    """(N, C, P, P, P) float32 cubes around ``peaks``: channel c from ``volumes[c]`` normalised with ``scales[c]``
    (:func:`patches`)."""
    cubes = [patches(volume, peaks, spacing_xyz, search, *scale) for volume, scale in zip(volumes, scales)]
    return cubes[0] if len(cubes) == 1 else np.concatenate(cubes, axis=1)


def classify(networks: list[torch.nn.Module], cubes: np.ndarray, device: torch.device, mirror: bool = False,
             batch_size: int = 128) -> np.ndarray:
    """Mean probability of the networks that each cube holds a lesion at its centre; with ``mirror`` (the card's
    ``test_time_mirroring``), the mean over each cube and its left-right mirror image (x, the last axis: the two
    breasts are near mirror images, and the classifier learnt with flips), both views in one batch."""
    if not len(cubes):
        return np.zeros(0, dtype=np.float32)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(cubes), batch_size):
            batch = torch.from_numpy(cubes[start:start + batch_size]).to(device)
            views = torch.cat([batch, batch.flip(-1)]) if mirror else batch
            probability = torch.stack([torch.sigmoid(net(views))[:, 0] for net in networks]).mean(0)
            outputs.append(probability.view(-1, len(batch)).mean(0).cpu())  # the mean of the two views
    return torch.cat(outputs).numpy()


def focus_region(score: np.ndarray, peak: np.ndarray, spacing_xyz: tuple[float, ...],
                 search: FocusSearch) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, mask in the box): the voxels within ``region_radius_mm`` of ``peak`` whose score exceeds
    ``region_fraction`` of the peak's, connected to it."""
    reach = [int(np.ceil(search.region_radius_mm / s)) for s in _zyx(spacing_xyz)]
    box = tuple(slice(max(c - r, 0), c + r + 1) for c, r in zip(peak, reach))
    above = score[box] > search.region_fraction * score[tuple(peak)]
    labels, _ = ndimage.label(above, np.ones((3, 3, 3), bool))
    return box, labels == labels[tuple(c - b.start for c, b in zip(peak, box))]


def breast_box(breast: np.ndarray, spacing_xyz: tuple[float, ...], margin_mm: float) -> tuple[slice, ...]:
    """The breast's bounding box grown by ``margin_mm``: blob scores and cubes inside the breast computed on it
    equal those of the whole volume (the margin covers the Gaussians' reach and half a cube)."""
    return _grown_box(breast, [int(np.ceil(margin_mm / s)) for s in _zyx(spacing_xyz)])


def _grown_box(mask: np.ndarray, margin: list[int]) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask grown by ``margin`` voxels per axis, within the array."""
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n))
                 for b, m, n in zip(bounding_box(mask), margin, mask.shape))


def touching(mask: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Whether each peak lies on ``mask`` or next to it (its six face neighbours), as one binary dilation of the
    mask would tell, looked up at the peaks only."""
    near = np.zeros(len(peaks), dtype=bool)
    for offset in np.vstack([np.zeros(3, int), np.eye(3, dtype=int), -np.eye(3, dtype=int)]):
        points = np.clip(peaks + offset, 0, np.array(mask.shape) - 1)
        near |= mask[tuple(points.T)]
    return near


def search_margin_mm(search: FocusSearch) -> float:
    return max(3.0 * search.large_sigma_mm, search.patch_voxels * search.patch_spacing_mm / 2.0) + 2.0


@dataclass
class FociResult:
    """New foci as a mask on the arrays' grid, the (k, j, i) peak and classifier probability of each, and the shape
    of the classifier's input (candidates, 1, P, P, P)."""

    mask: np.ndarray
    peaks: np.ndarray
    probabilities: np.ndarray
    network_input: tuple[int, ...]
    vetoed: list[int] = field(default_factory=list)  #: labels of the lesion map the classifier rejects


def without_small_regions(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """``mask`` without its 26-connected regions of fewer than ``min_voxels`` voxels."""
    labels, count = ndimage.label(mask, np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


@dataclass
class Candidates:
    """A study's scored candidates: the box of the arrays they were found in, the blob score there, the peaks
    (indices in the box), the classifier's probability of each, and the volumes its cubes show (cut to the box)
    with the (offset, scale) each was normalised with (:func:`breast_scale`), and whether the classifier also saw
    their mirror images (:func:`classify`; :func:`lesion_veto_scores` does the same)."""

    box: tuple[slice, ...]
    score: np.ndarray
    inside: np.ndarray
    peaks: np.ndarray
    probability: np.ndarray
    volumes: list[np.ndarray]
    scales: list[tuple[float, float]]
    mirror: bool = False


def score_candidates(subtraction: np.ndarray, breast: np.ndarray, lesions: np.ndarray,
                     spacing_xyz: tuple[float, ...], networks: list[torch.nn.Module], device: torch.device,
                     search: FocusSearch, channels: Sequence[np.ndarray] | None = None,
                     mirror: bool = False) -> Candidates | None:
    """Blob peaks inside the breast that touch no lesion of ``lesions`` (all (z, y, x) arrays of one grid), with
    the classifier's probability of each (its cubes cut from ``channels``, :func:`cube_volumes`; default: the
    subtraction alone; ``mirror``: :func:`classify`'s); None without breast."""
    if not breast.any():
        return None
    box = breast_box(breast, spacing_xyz, search_margin_mm(search))
    sub, inside = np.asarray(subtraction[box], dtype=np.float32), breast[box]
    score = blob_score(sub, inside, spacing_xyz, search)
    peaks = candidate_peaks(score, inside, spacing_xyz, search)
    peaks = peaks[~touching(lesions[box] > 0, peaks)]
    volumes = [sub] if channels is None else [np.asarray(volume[box], dtype=np.float32) for volume in channels]
    scales = [breast_scale(volume, inside) for volume in volumes]
    probability = classify(networks, channel_cubes(volumes, scales, peaks, spacing_xyz, search), device, mirror)
    return Candidates(box, score, inside, peaks, probability, volumes, scales, mirror)


def grow_foci(candidates: Candidates, shape: tuple[int, ...], spacing_xyz: tuple[float, ...], search: FocusSearch,
              threshold: float, min_voxels: float = 0.0, min_score: float | None = None) -> np.ndarray:
    """The mask (of ``shape``) of the foci grown from the candidates above ``threshold`` (and above ``min_score``,
    when given, a floor higher than the search's), inside the breast, of at least ``min_voxels``."""
    mask = np.zeros(shape, dtype=bool)
    accepted = candidates.probability > threshold
    if min_score is not None:
        accepted &= candidates.score[tuple(candidates.peaks.T)] > min_score
    local = mask[candidates.box]
    for peak in candidates.peaks[accepted]:
        region_box, region = focus_region(candidates.score, peak, spacing_xyz, search)
        local[region_box] |= region & candidates.inside[region_box]
    if local.any():
        grown = _grown_box(local, [1, 1, 1])
        local[grown] = without_small_regions(local[grown], min_voxels)
    return mask


def find_foci(subtraction: np.ndarray, breast: np.ndarray, lesions: np.ndarray, spacing_xyz: tuple[float, ...],
              networks: list[torch.nn.Module], device: torch.device, search: FocusSearch,
              threshold: float, min_voxels: float = 0.0, probability: np.ndarray | None = None,
              channels: Sequence[np.ndarray] | None = None, mirror: bool = False) -> FociResult:
    """Foci the classifier gives more than ``threshold`` that touch no lesion of ``lesions`` (all (z, y, x) arrays
    of one grid), grown inside the breast, of at least ``min_voxels``; given the lesion ``probability`` and a card
    with :attr:`FocusSearch.veto_below`, also the lesions the classifier rejects (:func:`lesion_veto_scores`).
    ``channels``: the volumes the classifier's cubes show (:func:`cube_volumes`; default: the subtraction);
    ``mirror``: the classifier also sees each cube's mirror image (:func:`classify`)."""
    cube = (1 if channels is None else len(channels),) + (search.patch_voxels,) * 3
    candidates = score_candidates(subtraction, breast, lesions, spacing_xyz, networks, device, search, channels,
                                  mirror)
    if candidates is None:
        return FociResult(np.zeros(breast.shape, dtype=bool), np.zeros((0, 3), int), np.zeros(0), (0,) + cube)
    mask = grow_foci(candidates, breast.shape, spacing_xyz, search, threshold, min_voxels)
    peaks = candidates.peaks + np.array([b.start for b in candidates.box])
    kept = (candidates.probability > threshold) & mask[tuple(peaks.T)]
    scores = {} if probability is None or search.veto_below is None else lesion_veto_scores(
        candidates, lesions, probability, spacing_xyz, networks, device, search)
    vetoed = [label for label, score in scores.items() if score < search.veto_below]
    return FociResult(mask, peaks[kept], candidates.probability[kept], (len(peaks) + 2 * len(scores),) + cube,
                      vetoed)


def search_region(breast: sitk.Image, search: FocusSearch,
                  lesions: sitk.Image | None = None) -> tuple[list[int], list[int]] | None:
    """(size, index) of the block of ``breast``'s grid that the search reads: the breast's bounding box grown by
    :func:`search_margin_mm` (as :func:`breast_box` grows it), and every voxel of ``lesions`` (same grid), for
    ``sitk.RegionOfInterest``; None without breast. Cutting the study's volumes to it first spares copying and
    subtracting them whole, and the lesion map can be rebuilt on it alone."""
    mask = sitk.GetArrayViewFromImage(breast)
    if not mask.any():
        return None
    margin = [int(np.ceil(search_margin_mm(search) / s)) for s in breast.GetSpacing()]
    box = bounding_box(mask)[::-1]  # (x, y, z), the image's index order
    start = [max(b.start - m, 0) for b, m in zip(box, margin)]
    stop = [min(b.stop + m, n) for b, m, n in zip(box, margin, breast.GetSize())]
    labels = None if lesions is None else sitk.GetArrayViewFromImage(lesions)
    if labels is not None and labels.any():
        lesion_box = bounding_box(labels)[::-1]
        start = [min(a, b.start) for a, b in zip(start, lesion_box)]
        stop = [max(a, b.stop) for a, b in zip(stop, lesion_box)]
    return [b - a for a, b in zip(start, stop)], start


def added_foci_rows(foci: FociResult, reference_lps: sitk.Image) -> list[dict]:
    """One row per focus: its peak in RAS millimetres (as the lesion table's centroids) and its probability;
    ``reference_lps`` is the LPS-ordered grid of the arrays the foci were found in."""
    rows = []
    for (k, j, i), probability in zip(foci.peaks, foci.probabilities):
        x, y, z = reference_lps.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
        rows.append({"peak_ras_mm": [round(-x, 2), round(-y, 2), round(z, 2)],
                     "probability": round(float(probability), 4)})
    return rows


def lesion_veto_scores(candidates: Candidates, lesions: np.ndarray, probability: np.ndarray,
                       spacing_xyz: tuple[float, ...], networks: list[torch.nn.Module], device: torch.device,
                       search: FocusSearch) -> dict[int, float]:
    """For each label of ``lesions`` (a label map; arrays of the grid the candidates were scored on), the higher of
    the classifier's probabilities of two cubes: centred at the lesion's highest ``probability`` and at its highest
    blob score. A lesion under :attr:`FocusSearch.veto_below` is dropped; one larger than
    :attr:`FocusSearch.veto_max_mm3` is not judged.

    Why: the lesion network's false positives are mostly enhancing vessels and gland that it sees slice by slice;
    on 48 tuning phantom studies the bundled classifier (also trained on such lesions:
    :func:`..training.foci.component_examples`) gives 20 of its 25 false lesions less than 0.5 at both points and
    none of its 54 true ones; the card vetoes below 0.2, where no true lesion of 96 tuning studies is lost.
    """
    box = candidates.box
    max_voxels = None if search.veto_max_mm3 is None else search.veto_max_mm3 / float(np.prod(spacing_xyz))
    found, centres = veto_centres(lesions[box], probability[box], candidates.score, max_voxels)
    if not found:
        return {}
    cubes = channel_cubes(candidates.volumes, candidates.scales, centres, spacing_xyz, search)
    best = classify(networks, cubes, device, candidates.mirror).reshape(-1, 2).max(axis=1)
    return {label: float(p) for label, p in zip(found, best)}


def veto_centres(labels: np.ndarray, probability: np.ndarray, score: np.ndarray,
                 max_voxels: float | None = None) -> tuple[list[int], np.ndarray]:
    """(labels present in ``labels``, of at most ``max_voxels`` voxels when given, and their veto cubes' centres (2
    per label, in order)): each label's voxel of highest lesion ``probability`` and its voxel of highest blob
    ``score``."""
    found, centres = [], []
    if not labels.any():
        return found, np.zeros((0, 3), dtype=int)
    around = bounding_box(labels)  # find_objects visits every voxel it is given: only the lesions' block
    for label, extent in enumerate(ndimage.find_objects(labels[around]), start=1):
        if extent is None:
            continue
        extent = tuple(slice(a.start + e.start, a.start + e.stop) for a, e in zip(around, extent))
        inside = labels[extent] == label  # each label is looked for in its own box only
        if max_voxels is not None and np.count_nonzero(inside) > max_voxels:
            continue
        voxels = np.argwhere(inside) + np.array([e.start for e in extent])
        found.append(label)
        centres += [voxels[np.argmax(probability[extent][inside])], voxels[np.argmax(score[extent][inside])]]
    return found, np.array(centres, dtype=int).reshape(-1, 3)


def lps_arrays(*images: sitk.Image) -> list[np.ndarray]:
    """The (z, y, x) arrays of images of one grid, with that grid's axes turned to LPS."""
    return [sitk.GetArrayFromImage(reorient(image, "LPS")) for image in images]


def lps_block_arrays(images: Sequence[sitk.Image], size: list[int], index: list[int]) -> list[np.ndarray]:
    """:func:`lps_arrays` of the block of ``size`` voxels from ``index`` (as for ``sitk.RegionOfInterest``) of
    images of one grid. On an LPS-ordered grid (ITK's own, and DICOM's axial one) they are read-only views of the
    images' voxels, which the caller keeps alive while it reads them: cutting and copying a study's three volumes
    took about 0.09 s. Otherwise copies of the block, turned to LPS."""
    if orientation_code(images[0]) != "LPS":
        return lps_arrays(*(sitk.RegionOfInterest(image, size, index) for image in images))
    block = tuple(slice(start, start + count) for start, count in zip(reversed(index), reversed(size)))
    return [sitk.GetArrayViewFromImage(image)[block] for image in images]


def mask_like(mask_lps: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A UInt8 image of an LPS-ordered mask on ``reference``'s grid (whatever its orientation)."""
    image = sitk.GetImageFromArray(mask_lps.astype(np.uint8))
    image.CopyInformation(reorient(reference, "LPS"))
    return reorient(image, orientation_code(reference))
