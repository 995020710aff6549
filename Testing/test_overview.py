"""The overview figure: one panel for the subtraction MIP and one per lesion, sized to the images' aspect."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import SimpleITK as sitk

from BreastSegmentationLib.reports.overview import MAX_LESION_PANELS, PANEL_WIDTH_IN, save_overview

DPI = 110


def image(array: np.ndarray) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing((0.8, 0.8, 2.0))
    return result


def study(lesion_count: int) -> tuple[sitk.Image, ...]:
    rng = np.random.default_rng(0)
    pre = rng.normal(100.0, 5.0, size=(12, 30, 60)).astype(np.float32)
    post = pre * 1.1
    breast = np.zeros(pre.shape, np.uint8)
    breast[:, 5:25, 5:55] = 1
    lesions = np.zeros(pre.shape, np.uint8)
    for label in range(1, lesion_count + 1):
        lesions[label, 10:13, 5 * label:5 * label + 3] = label
        post[lesions == label] *= 2.0
    return image(pre), image(post), image(breast), image(lesions)


def test_one_panel_per_lesion_up_to_the_limit_and_height_from_the_aspect(tmp_path):
    for lesion_count, panels in ((2, 3), (0, 2), (MAX_LESION_PANELS + 2, MAX_LESION_PANELS + 1)):
        path = save_overview(*study(lesion_count), tmp_path / f"{lesion_count}.png", title="")
        height, width = matplotlib.image.imread(path).shape[:2]
        assert width == round(PANEL_WIDTH_IN * panels * DPI)
        # panels are twice as wide as high (60 x 30 voxels of equal spacing), plus a strip for their titles
        assert round(PANEL_WIDTH_IN * DPI / 2) < height < round(PANEL_WIDTH_IN * DPI / 2 + DPI)


def test_each_lesion_is_shown_on_its_largest_slice():
    from BreastSegmentationLib.reports.overview import _largest_slices
    lesions = np.zeros((12, 20, 20), np.uint16)
    lesions[5:9, 10:12, 10:12] = 1
    lesions[7, 8:14, 8:14] = 1  # lesion 1 is widest on slice 7
    lesions[3, 2:4, 2:4] = 2
    lesions[2, 2:3, 2:3] = 2
    lesions[10, 15, 15] = 4  # label 3 is absent
    assert _largest_slices(lesions, 3) == {1: 7, 2: 3, 4: 10}
    assert _largest_slices(lesions, 1) == {1: 7}
    assert _largest_slices(np.zeros_like(lesions), 3) == {}


def test_a_study_stored_in_another_orientation_gives_the_same_figure(tmp_path):
    """The figure shows every study in LPS display order, whatever order its voxels are stored in."""
    images = study(2)
    as_stored = save_overview(*images, tmp_path / "lps.png", title="")
    turned = save_overview(*(sitk.DICOMOrient(item, "RAI") for item in images), tmp_path / "rai.png", title="")
    np.testing.assert_array_equal(matplotlib.image.imread(turned), matplotlib.image.imread(as_stored))
