"""Voxel-wise segmentation metrics of a predicted mask against a reference mask, per case and per slice.

Overlap metrics follow seed 000 Eq. 5-8 on voxel counts (no epsilon smoothing); surface distances follow MONAI's
``compute_hausdorff_distance`` (see :data:`CONVENTIONS`). Masks are SimpleITK images on the same grid; foreground
is where :func:`~BreastSegmentationLib.io.images.binary_mask` puts it (values that round to a non-zero integer, so
a probability map is thresholded above 0.5). A grid mismatch is an :class:`~BreastSegmentationLib.errors.InputError`:
the masks are never resampled silently.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from monai.metrics import get_mask_edges, get_surface_distance

from ..errors import InputError
from ..io.images import binary_mask, same_geometry

#: What every number means, stored beside the numbers in ``metrics.json``.
CONVENTIONS: dict[str, str] = {
    "overlap": "voxel counts over foreground voxels (value rounded to an integer != 0): dice = 2TP/(2TP+FP+FN), "
    "iou = TP/(TP+FP+FN), precision = TP/(TP+FP), recall = TP/(TP+FN) (seed 000 Eq. 5-8, no epsilon)",
    "empty_masks": "both masks empty: dice, iou, precision and recall are both_empty_score (1.0 by default: the limit "
    "of seed 001's epsilon-smoothed Eq. 1-4 and MONAI's ignore_empty=False; MAMA-MIA case scoring uses 0); exactly "
    "one mask empty: all four are 0 (precision with no predicted voxel, recall with no reference voxel)",
    "hd": "symmetric Hausdorff distance in mm between the surface voxels of the two masks (MONAI "
    "compute_hausdorff_distance: surface = mask minus its 6-connected erosion, Euclidean distance with the voxel "
    "spacing); null when either mask is empty",
    "hd95": "max of the two directed 95th percentiles of the surface distances in mm (MONAI and MAMA-MIA convention; "
    "medpy and seg-metrics pool both directions instead); null when either mask is empty",
}


def mask_array(mask: sitk.Image) -> np.ndarray:
    """The mask as a boolean KJI (z, y, x) array, foreground as :func:`binary_mask` defines it."""
    return sitk.GetArrayFromImage(binary_mask(mask)).astype(bool)


def require_same_grid(image: sitk.Image, reference: sitk.Image, name: str, reference_name: str) -> None:
    """Raise :class:`InputError` unless ``image`` lies on ``reference``'s grid (size, spacing, origin, direction)."""
    if same_geometry(image, reference):
        return
    getters = {"size": sitk.Image.GetSize, "spacing": sitk.Image.GetSpacing, "origin": sitk.Image.GetOrigin,
               "direction": sitk.Image.GetDirection}
    differences = []
    for grid_property, get in getters.items():
        mine, theirs = (tuple(round(value, 4) for value in get(picture)) for picture in (image, reference))
        if mine != theirs:
            differences.append(f"{grid_property} {mine} vs {theirs}")
    detail = "; ".join(differences) or "origin or direction differ by more than 1e-4"
    raise InputError(f"{name} and {reference_name} are on different grids ({detail}); "
                     "resample one onto the other first")


def scores_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                       both_empty_score: float = 1.0) -> dict[str, np.ndarray]:
    """Dice, IoU, precision and recall from voxel counts (arrays of any shape), with the empty-mask convention."""
    tp, fp, fn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, fn))
    both_empty = (tp + fp + fn) == 0

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        # a zero denominator means no overlap (score 0) unless both masks are empty
        value = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        return np.where(both_empty, both_empty_score, value)

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def overlap_counts(pred: np.ndarray, ref: np.ndarray, axis: tuple[int, ...] | None = None) -> tuple[np.ndarray, ...]:
    """True-positive, false-positive and false-negative voxel counts of boolean arrays, summed over ``axis``."""
    tp = np.count_nonzero(pred & ref, axis=axis)
    fp = np.count_nonzero(pred & ~ref, axis=axis)
    fn = np.count_nonzero(~pred & ref, axis=axis)
    return tp, fp, fn


def hausdorff_distances(pred: np.ndarray, ref: np.ndarray, spacing_kji: tuple[float, ...]) -> dict[str, float | None]:
    """Hausdorff distance and HD95 in mm between two boolean KJI arrays, as MONAI's ``compute_hausdorff_distance``.

    One edge extraction serves both numbers; the directed 95th percentiles use linear interpolation, as MONAI's
    ``torch.quantile``. ``None`` for both when either mask is empty.
    """
    if not pred.any() or not ref.any():
        return {"hd": None, "hd95": None}
    edges_pred, edges_ref = get_mask_edges(pred, ref, crop=True)
    directed = [
        get_surface_distance(edges_pred, edges_ref, distance_metric="euclidean", spacing=spacing_kji),
        get_surface_distance(edges_ref, edges_pred, distance_metric="euclidean", spacing=spacing_kji),
    ]
    return {
        "hd": float(max(distances.max() for distances in directed)),
        "hd95": float(max(np.percentile(distances, 95) for distances in directed)),
    }


def metrics_from_arrays(pred: np.ndarray, ref: np.ndarray, spacing_kji: tuple[float, ...],
                        both_empty_score: float = 1.0) -> dict[str, float | int | None]:
    """:func:`segmentation_metrics` on boolean KJI arrays with their voxel spacing in KJI order."""
    tp, fp, fn = overlap_counts(pred, ref)
    scores = {name: float(value) for name, value in scores_from_counts(tp, fp, fn, both_empty_score).items()}
    return {
        **scores,
        **hausdorff_distances(pred, ref, spacing_kji),
        "pred_voxels": int(tp + fp),
        "ref_voxels": int(tp + fn),
        "tp_voxels": int(tp),
        "fp_voxels": int(fp),
        "fn_voxels": int(fn),
    }


def segmentation_metrics(pred: sitk.Image, ref: sitk.Image,
                         both_empty_score: float = 1.0) -> dict[str, float | int | None]:
    """Dice, IoU, precision, recall, HD and HD95 (mm) of ``pred`` against ``ref``, plus the voxel counts.

    Empty masks: when both are empty the four overlap scores are ``both_empty_score`` (1.0 by default; pass 0.0 for
    MAMA-MIA case scoring); when exactly one is empty they are 0; ``hd``/``hd95`` are ``None`` when either is empty.
    See :data:`CONVENTIONS`.
    """
    require_same_grid(pred, ref, "prediction", "reference")
    return metrics_from_arrays(mask_array(pred), mask_array(ref), tuple(reversed(ref.GetSpacing())), both_empty_score)


def per_slice_from_arrays(pred: np.ndarray, ref: np.ndarray, axis: int = 2,
                          both_empty_score: float = 1.0) -> list[dict]:
    """:func:`per_slice_metrics` on boolean KJI arrays; ``axis`` is still the image axis (0 = i, 1 = j, 2 = k)."""
    if axis not in (0, 1, 2):
        raise InputError(f"slice axis must be 0 (i), 1 (j) or 2 (k), got {axis}")
    kji_axis = 2 - axis
    summed_axes = tuple(other for other in range(3) if other != kji_axis)
    tp, fp, fn = overlap_counts(pred, ref, axis=summed_axes)
    scores = scores_from_counts(tp, fp, fn, both_empty_score)
    return [
        {
            "slice": index,
            "pred_voxels": int(tp[index] + fp[index]),
            "ref_voxels": int(tp[index] + fn[index]),
            "tp_voxels": int(tp[index]),
            **{name: float(values[index]) for name, values in scores.items()},
        }
        for index in range(len(tp))
    ]


def per_slice_metrics(pred: sitk.Image, ref: sitk.Image, axis: int = 2, both_empty_score: float = 1.0) -> list[dict]:
    """Voxel counts and overlap scores for every slice along image axis ``axis`` (0 = i, 1 = j, 2 = k).

    Same empty-mask convention as :func:`segmentation_metrics`, so slices empty in both masks score
    ``both_empty_score``: filter on ``ref_voxels``/``pred_voxels`` to average over lesion slices only.
    """
    require_same_grid(pred, ref, "prediction", "reference")
    return per_slice_from_arrays(mask_array(pred), mask_array(ref), axis, both_empty_score)
