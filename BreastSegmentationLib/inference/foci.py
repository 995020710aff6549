"""Foci: small enhancing lesions (about 3-7 mm) that the slice-wise lesion network misses, looked for in 3-D.

Why: the lesion network sees a few neighbouring slices, where a focus of two to four slices looks like the
cross-section of an enhancing vessel, and it gives most of them almost no probability (README, Training). In 3-D a
vessel runs on where a focus ends. So blobs of the subtraction are proposed (the local maxima of a difference of
Gaussians inside the breast, scored robustly against the breast's own texture) and a small 3-D classifier (MONAI's
``Classifier``) looks at a 32 mm cube around each, sampled at 1 mm. A blob it is sure of, away from the lesions the
network found, is added as a lesion: the voxels around its peak that score above half the peak's blob score.

Everything here works on (z, y, x) arrays of the study's own grid in LPS order (the order the classifier was
trained in; its training flips every axis, so RAS or other flips read the same) with the grid's (x, y, z) spacing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..io.images import reorient

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

    @classmethod
    def from_dict(cls, data: dict) -> FocusSearch:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


def _zyx(spacing_xyz: tuple[float, ...]) -> np.ndarray:
    return np.asarray(spacing_xyz, dtype=float)[::-1]


def blob_score(subtraction: np.ndarray, breast: np.ndarray, spacing_xyz: tuple[float, ...],
               search: FocusSearch) -> np.ndarray:
    """Difference of Gaussians (sigmas in mm) of the subtraction as a robust z-score over the breast's voxels."""
    image = sitk.GetImageFromArray(np.asarray(subtraction, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    dog = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, search.small_sigma_mm))
    dog -= sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, search.large_sigma_mm))
    values = dog[breast]
    median = np.median(values)
    spread = np.median(np.abs(values - median)) * MAD_TO_SIGMA + 1e-6
    return (dog - median) / spread


def candidate_peaks(score: np.ndarray, breast: np.ndarray, spacing_xyz: tuple[float, ...], search: FocusSearch,
                    min_score: float | None = None) -> np.ndarray:
    """(k, j, i) rows of the local maxima of ``score`` inside the breast above ``min_score`` (the search's).

    The maximum filter runs on the breast's bounding box grown by half its window only: inside the breast it gives
    the same maxima as on the whole array.
    """
    size = [max(3, int(round(search.peak_window_mm / s)) | 1) for s in _zyx(spacing_xyz)]
    if not breast.any():
        return np.zeros((0, 3), dtype=np.int64)
    box = _grown_box(breast, [n // 2 for n in size])
    part = score[box]
    floor = search.min_score if min_score is None else min_score
    peaks = np.argwhere((part == ndimage.maximum_filter(part, size=size)) & (part > floor) & breast[box])
    return peaks + np.array([b.start for b in box])


def subtraction_scale(subtraction: np.ndarray, breast: np.ndarray) -> tuple[float, float]:
    """(offset, scale) mapping the breast's median subtraction to 0 and its 99th percentile to 1."""
    median, high = np.percentile(subtraction[breast], (50.0, 99.0))
    return float(median), float(max(high - median, 1e-3))


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


def patches(subtraction: np.ndarray, peaks: np.ndarray, spacing_xyz: tuple[float, ...], search: FocusSearch,
            offset: float, scale: float) -> np.ndarray:
    """(N, 1, P, P, P) float32 cubes of the normalised subtraction centred on ``peaks``, sampled linearly at
    ``search.patch_spacing_mm`` (outside the volume: the breast median, i.e. 0).

    Trilinear interpolation on a grid of points is three one-dimensional ones, and since peaks lie on voxels, the
    weights are the same for every cube: each cube is its source block times three small matrices. The values are
    scipy's ``map_coordinates(order=1, mode="constant")``'s to float rounding, in a quarter of its time.
    """
    size = search.patch_voxels
    axes = [_linear_weights(search.patch_spacing_mm / step, size) for step in _zyx(spacing_xyz)]
    padding = [(max(-first, 0), max(first + weights.shape[1], 0)) for _, first, weights in axes]
    normalised = np.pad((np.asarray(subtraction, dtype=np.float32) - offset) / scale, padding)
    (_, _, along_z), (_, _, along_y), (_, _, along_x) = axes
    cubes = np.empty((len(peaks), 1) + (size,) * 3, dtype=np.float32)
    for index, peak in enumerate(peaks):
        start = [int(c) + first + before for c, (_, first, _), (before, _) in zip(peak, axes, padding)]
        block = normalised[start[0]:start[0] + along_z.shape[1], start[1]:start[1] + along_y.shape[1],
                           start[2]:start[2] + along_x.shape[1]]
        cube = cubes[index, 0]
        cube[:] = np.einsum("cx,by,az,zyx->abc", along_x, along_y, along_z, block, optimize=True)
        # Points beyond the volume's first or last voxel take the outside value, as map_coordinates's "constant".
        outside = [(c + positions < 0) | (c + positions > n - 1)
                   for c, (positions, _, _), n in zip(peak, axes, subtraction.shape)]
        cube[outside[0][:, None, None] | outside[1][:, None] | outside[2]] = 0.0
    return cubes


def classify(networks: list[torch.nn.Module], cubes: np.ndarray, device: torch.device,
             batch_size: int = 128) -> np.ndarray:
    """Mean probability of the networks that each cube holds a lesion at its centre."""
    if not len(cubes):
        return np.zeros(0, dtype=np.float32)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(cubes), batch_size):
            batch = torch.from_numpy(cubes[start:start + batch_size]).to(device)
            outputs.append(torch.stack([torch.sigmoid(net(batch))[:, 0] for net in networks]).mean(0).cpu())
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
    found = ndimage.find_objects(mask.view(np.uint8))[0]
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(found, margin, mask.shape))


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
    """New foci as a mask on the arrays' grid, one row per focus (peak index, classifier probability), and the
    shape of the classifier's input (candidates, 1, P, P, P)."""

    mask: np.ndarray
    found: list[dict]
    network_input: tuple[int, ...]


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
    (indices in the box) and the classifier's probability of each."""

    box: tuple[slice, ...]
    score: np.ndarray
    inside: np.ndarray
    peaks: np.ndarray
    probability: np.ndarray


def score_candidates(subtraction: np.ndarray, breast: np.ndarray, lesions: np.ndarray,
                     spacing_xyz: tuple[float, ...], networks: list[torch.nn.Module], device: torch.device,
                     search: FocusSearch) -> Candidates | None:
    """Blob peaks inside the breast that touch no lesion of ``lesions`` (all (z, y, x) arrays of one grid), with
    the classifier's probability of each; None without breast."""
    if not breast.any():
        return None
    box = breast_box(breast, spacing_xyz, search_margin_mm(search))
    sub, inside = np.asarray(subtraction[box], dtype=np.float32), breast[box]
    score = blob_score(sub, inside, spacing_xyz, search)
    peaks = candidate_peaks(score, inside, spacing_xyz, search)
    peaks = peaks[~touching(lesions[box] > 0, peaks)]
    probability = classify(networks, patches(sub, peaks, spacing_xyz, search, *subtraction_scale(sub, inside)),
                           device)
    return Candidates(box, score, inside, peaks, probability)


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
              threshold: float, min_voxels: float = 0.0) -> FociResult:
    """Foci the classifier gives more than ``threshold`` that touch no lesion of ``lesions`` (all (z, y, x) arrays
    of one grid), grown inside the breast, of at least ``min_voxels``."""
    cube = (1,) + (search.patch_voxels,) * 3
    candidates = score_candidates(subtraction, breast, lesions, spacing_xyz, networks, device, search)
    if candidates is None:
        return FociResult(np.zeros(breast.shape, dtype=bool), [], (0,) + cube)
    mask = grow_foci(candidates, breast.shape, spacing_xyz, search, threshold, min_voxels)
    starts = np.array([b.start for b in candidates.box])
    found = [{"peak_index_zyx": [int(v) for v in peak + starts], "probability": round(float(p), 4)}
             for peak, p in zip(candidates.peaks, candidates.probability)
             if p > threshold and mask[tuple(peak + starts)]]
    return FociResult(mask, found, (len(candidates.peaks),) + cube)


def lps_arrays(*images: sitk.Image) -> list[np.ndarray]:
    """The (z, y, x) arrays of images of one grid, with that grid's axes turned to LPS."""
    return [sitk.GetArrayFromImage(reorient(image, "LPS")) for image in images]


def mask_like(mask_lps: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A UInt8 image of an LPS-ordered mask on ``reference``'s grid (whatever its orientation)."""
    image = sitk.GetImageFromArray(mask_lps.astype(np.uint8))
    image.CopyInformation(reorient(reference, "LPS"))
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(reference.GetDirection())
    return reorient(image, code)
