"""Post-processing of predicted breast and lesion masks."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from BreastSegmentationLib.inference.postprocess import (
    LesionCleaning,
    breast_mask_on,
    clean_breast_mask,
    clean_lesion_mask,
    without_labels,
)
from BreastSegmentationLib.io.images import resample_like


def as_image(array: np.ndarray, spacing=(0.8, 0.8, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def test_breast_cleaning_keeps_two_breasts_fills_holes_and_drops_islands():
    array = np.zeros((10, 40, 40), np.uint8)
    array[2:8, 5:15, 5:15] = 1          # left breast
    array[2:8, 5:13, 25:35] = 1         # right breast, a little smaller
    array[4, 8:10, 8:10] = 0            # a hole
    array[1, 30:32, 30:32] = 1          # an island (false positive over the heart)
    cleaned = clean_breast_mask(as_image(array))
    result = sitk.GetArrayFromImage(cleaned)
    assert result[4, 8:10, 8:10].all()
    assert not result[1, 30:32, 30:32].any()
    assert result[2:8, 5:13, 25:35].all() and result[2:8, 5:15, 5:15].all()
    assert result.sum() == 600 + 480
    assert cleaned.GetDirection() == as_image(array).GetDirection()


def test_breast_cleaning_of_an_empty_mask_stays_empty():
    assert sitk.GetArrayFromImage(clean_breast_mask(as_image(np.zeros((4, 8, 8))))).sum() == 0


def test_breast_mask_cleaned_on_the_coarse_grid_equals_the_mask_cleaned_on_the_fine_one():
    """A smooth breast probability on a 2 mm grid, with a hole and an island, put on a 1 mm grid: the island is gone,
    the hole filled, and the outline is the interpolated probability's (as cleaning on the fine grid gives)."""
    z, y, x = np.mgrid[:8, :40, :40]
    probability = np.clip(1.2 - np.hypot(y - 20.0, x - 14.0) / 10.0, 0.0, 1.0)
    probability[3:5, 19:21, 13:15] = 0.1      # a hole
    probability[2, 34:36, 34:36] = 0.9        # an island
    coarse = sitk.GetImageFromArray(probability.astype(np.float32))
    coarse.SetSpacing((2.0, 2.0, 3.0))
    coarse.SetOrigin((10.0, -5.0, 3.0))
    fine = sitk.Image(80, 80, 8, sitk.sitkUInt8)
    fine.SetSpacing((1.0, 1.0, 3.0))
    fine.SetOrigin((9.5, -5.5, 3.0))
    on_fine = breast_mask_on(coarse, 0.5, fine)
    assert on_fine.GetPixelID() == sitk.sitkUInt8 and on_fine.GetSize() == fine.GetSize()
    assert on_fine.GetOrigin() == fine.GetOrigin() and on_fine.GetSpacing() == fine.GetSpacing()
    mask = sitk.GetArrayFromImage(on_fine)
    on_fine_grid = sitk.GetArrayFromImage(clean_breast_mask(resample_like(coarse, fine) > 0.5))
    assert mask[3, 38:42, 26:30].all() and not mask[2, 66:74, 66:74].any()
    assert np.array_equal(mask, on_fine_grid)


def test_lesion_cleaning_drops_small_and_outside_lesions_and_labels_by_size():
    breast = np.zeros((10, 40, 40), np.uint8)
    breast[:, :, :20] = 1
    lesions = np.zeros_like(breast)
    lesions[2:6, 2:8, 2:8] = 1      # 144 voxels * 1.28 mm3: kept, label 1
    lesions[2:4, 20:24, 5:9] = 1    # 32 voxels: kept, label 2
    lesions[7, 30, 5] = 1           # 1.28 mm3: too small
    lesions[2:6, 2:8, 25:35] = 1    # outside the breast
    cleaned = sitk.GetArrayFromImage(clean_lesion_mask(as_image(lesions), as_image(breast)))
    assert set(np.unique(cleaned)) == {0, 1, 2}
    assert (cleaned[2:6, 2:8, 2:8] == 1).all()
    assert (cleaned[2:4, 20:24, 5:9] == 2).all()
    assert cleaned[7, 30, 5] == 0 and not cleaned[2:6, 2:8, 25:35].any()


def test_lesion_cleaning_minimum_volume_is_in_mm3():
    breast = np.ones((6, 12, 12), np.uint8)
    lesions = np.zeros_like(breast)
    lesions[2:4, 2:4, 2:4] = 1  # 8 voxels
    rules = LesionCleaning(min_volume_mm3=9.0)
    assert sitk.GetArrayFromImage(clean_lesion_mask(as_image(lesions, (1, 1, 1)), as_image(breast, (1, 1, 1)), rules)).sum() == 0
    kept = clean_lesion_mask(as_image(lesions, (1, 1, 2)), as_image(breast, (1, 1, 2)), rules)
    assert sitk.GetArrayFromImage(kept).sum() == 8


def test_lesion_cleaning_keeps_only_candidates_whose_probability_peaks_above_the_peak_level():
    breast = np.ones((8, 30, 30), np.uint8)
    probability = np.zeros(breast.shape, np.float32)
    probability[2:6, 2:10, 2:10] = 0.5     # faint blob: above the threshold, never above the peak level
    probability[2:6, 15:25, 15:25] = 0.5   # a lesion with a faint rim ...
    probability[3:5, 18:22, 18:22] = 0.9   # ... and a confident core: kept whole, rim included
    image = sitk.GetImageFromArray(probability)
    image.CopyInformation(as_image(breast))
    candidates = image > 0.4
    rules = LesionCleaning(min_volume_mm3=1.0, min_peak_probability=0.8)
    cleaned = sitk.GetArrayFromImage(clean_lesion_mask(candidates, as_image(breast), rules, probability=image))
    assert not cleaned[2:6, 2:10, 2:10].any()
    assert (cleaned[2:6, 15:25, 15:25] == 1).all() and cleaned.sum() == 4 * 10 * 10
    without_peak_rule = clean_lesion_mask(candidates, as_image(breast), LesionCleaning(min_volume_mm3=1.0),
                                          probability=image)
    assert sitk.GetArrayFromImage(without_peak_rule).max() == 2


def test_dropping_labels_renumbers_the_rest_in_their_order():
    labels = np.zeros((4, 8, 8), np.uint16)
    for label in range(1, 5):
        labels[label - 1, :label + 1, :] = label  # label 1 has 2 rows, 4 has 5: any order is kept as it is
    image = as_image(labels)
    result = without_labels(image, [2, 4], 4)
    assert result.GetPixelID() == image.GetPixelID() and result.GetSpacing() == image.GetSpacing()
    kept = sitk.GetArrayFromImage(result)
    np.testing.assert_array_equal(kept[labels == 1], 1)
    np.testing.assert_array_equal(kept[labels == 3], 2)
    assert not kept[(labels == 2) | (labels == 4)].any() and not kept[labels == 0].any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(without_labels(image, [], 4)), labels)
