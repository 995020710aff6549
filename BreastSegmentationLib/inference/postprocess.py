"""Post-processing of predicted masks with SimpleITK filters.

Breast masks: holes filled and small islands removed (keeping the one or two breast-sized components, so
a small false blob over the heart or in the air disappears). Lesion masks: 26-connected components below a
minimum volume, components lying mostly outside the breast and, given the probability, components whose probability
never reaches a higher peak level are dropped, the rest labelled 1..N by decreasing volume.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..data.preprocessing import fill_holes_per_slice
from ..io.images import cut_to_mask, paste_into_empty, resample_like, resampled_block


@dataclass(frozen=True)
class LesionCleaning:
    """Rules applied to thresholded lesion predictions.

    ``min_peak_probability`` is hysteresis thresholding: the threshold draws a lesion's outline, and the lesion is
    kept only where the probability somewhere inside it reaches this higher level, so that a low threshold can follow
    a faint lesion's edge without letting faint blobs (enhancing parenchyma) count as lesions. None: no such rule.
    """

    min_volume_mm3: float = 10.0
    min_fraction_in_breast: float = 0.5
    min_peak_probability: float | None = None


def _voxel_volume_mm3(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing()))


def _components_by_size(mask: sitk.Image) -> tuple[sitk.Image, sitk.LabelShapeStatisticsImageFilter]:
    """26-connected components relabelled 1..N by decreasing size, and their shape statistics."""
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), sortByObjectSize=True)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(labels)
    return labels, statistics


def label_by_size(mask: sitk.Image) -> sitk.Image:
    """The 26-connected components of a mask labelled 1..N by decreasing size, as UInt16 like lesion maps."""
    return sitk.Cast(_components_by_size(sitk.Cast(mask > 0, sitk.sitkUInt8))[0], sitk.sitkUInt16)


def without_labels(labels: sitk.Image, dropped: Collection[int], count: int) -> sitk.Image:
    """A label map of labels 1..``count`` with the ``dropped`` ones set to 0 and the rest renumbered 1..N in their
    order (so a map labelled by decreasing size stays so), without labelling components again."""
    kept = [label for label in range(1, count + 1) if label not in dropped]
    renumbered = {label: new for new, label in enumerate(kept, start=1)}
    return sitk.ChangeLabel(labels, changeMap={label: renumbered.get(label, 0) for label in range(1, count + 1)
                                               if renumbered.get(label, 0) != label})


def clean_breast_mask(mask: sitk.Image, keep_fraction: float = 0.1, max_components: int = 2) -> sitk.Image:
    """Keep the largest (up to two) components of at least ``keep_fraction`` of the largest, with holes filled."""
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    labels, statistics = _components_by_size(binary)
    if statistics.GetNumberOfLabels() == 0:
        return binary
    largest = statistics.GetNumberOfPixels(1)
    kept = [label for label in statistics.GetLabels()[:max_components]
            if statistics.GetNumberOfPixels(label) >= keep_fraction * largest]
    cleaned = sitk.Cast(sitk.BinaryThreshold(labels, 1, max(kept), 1, 0), sitk.sitkUInt8)
    return _fill_holes_per_slice(cleaned)


def breast_mask_on(probability: sitk.Image, threshold: float, reference: sitk.Image) -> sitk.Image:
    """The cleaned breast mask (:func:`clean_breast_mask`) of a breast probability, on ``reference``'s finer grid.

    Cleaned on the probability's own coarser grid (the breast model's, a quarter of the voxels), then the probability
    with the removed islands lowered to the threshold and the filled holes raised just above it is interpolated and
    thresholded: the outline stays as smooth as the interpolated probability's, where resampling the cleaned mask
    itself would make it a staircase of coarse voxels.
    """
    values = sitk.GetArrayViewFromImage(probability)
    kept = sitk.GetArrayFromImage(clean_breast_mask(probability > threshold)) > 0
    just_above = np.nextafter(np.float32(threshold), np.float32(np.inf))
    cleaned = sitk.GetImageFromArray(np.where(kept, np.maximum(values, just_above), np.minimum(values, threshold))
                                     .astype(np.float32))
    cleaned.CopyInformation(probability)
    if not kept.any():
        return sitk.Cast(resample_like(cleaned, reference) > threshold, sitk.sitkUInt8)
    # Interpolation reaches one voxel: beyond that from the kept voxels every value stays at or below the threshold,
    # so only that block is interpolated and thresholded, and the rest of the grid is 0.
    block, start = resampled_block(cut_to_mask(cleaned, kept, margin=1), reference)
    return paste_into_empty(sitk.Cast(block > threshold, sitk.sitkUInt8), start, reference)


def _fill_holes_per_slice(mask: sitk.Image) -> sitk.Image:
    """Fill holes in each axial slice: a 3-D fill misses holes that open onto the first or last slice."""
    filled = sitk.GetImageFromArray(fill_holes_per_slice(sitk.GetArrayViewFromImage(mask)).astype(np.uint8))
    filled.CopyInformation(mask)
    return filled


def _label_intensities(labels: sitk.Image, image: sitk.Image) -> sitk.LabelIntensityStatisticsImageFilter:
    """Mean, maximum, ... of ``image`` per label. Run-length based, so it visits only the labelled voxels: several
    times faster here than LabelStatisticsImageFilter, which visits every voxel and builds a histogram per label."""
    statistics = sitk.LabelIntensityStatisticsImageFilter()
    statistics.Execute(labels, image)
    return statistics


def clean_lesion_mask(lesions: sitk.Image, breast: sitk.Image, rules: LesionCleaning = LesionCleaning(),
                      probability: sitk.Image | None = None) -> sitk.Image:
    """Label lesions 1..N (largest first), dropping small ones, those mostly outside the breast and, given the
    ``probability`` they were thresholded from, those whose peak stays below ``rules.min_peak_probability``."""
    labels, statistics = _components_by_size(sitk.Cast(lesions > 0, sitk.sitkUInt8))
    inside = _label_intensities(labels, breast > 0)
    peaks = _label_intensities(labels, probability) \
        if probability is not None and rules.min_peak_probability is not None else None
    voxel_mm3 = _voxel_volume_mm3(lesions)
    kept = [label for label in statistics.GetLabels()
            if statistics.GetNumberOfPixels(label) * voxel_mm3 >= rules.min_volume_mm3
            and inside.GetMean(label) >= rules.min_fraction_in_breast
            and (peaks is None or peaks.GetMaximum(label) >= rules.min_peak_probability)]
    mapping = {label: new for new, label in enumerate(kept, start=1)}
    relabelled = sitk.ChangeLabel(labels, changeMap={label: mapping.get(label, 0) for label in statistics.GetLabels()})
    return sitk.Cast(relabelled, sitk.sitkUInt16)
