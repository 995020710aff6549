"""The OV crop (seed 000 Fig. 4), crop boxes, lesion slices, BAG geometry (seed 001) and Table 2 shapes."""

from __future__ import annotations

import numpy as np
import pytest

from BreastSegmentationLib.data.crops import (
    CropBox,
    bag_geometry,
    breast_extent,
    lesion_slice_indices,
    mask_box,
    ov_crop_box,
    ov_required_height,
    safe_distance_pixels,
    table2_shapes,
    uniform_ov_boxes,
)
from BreastSegmentationLib.data.preprocessing import Grid, PreparedCase
from BreastSegmentationLib.errors import InputError


def crafted_mask() -> np.ndarray:
    """(z, y, x) = (10, 100, 64); rows grow towards anterior (RAS layout).

    Slice 3: rows 60-89, columns 10-53. Slice 5: rows 50-80, columns 5-58, but at the midline column 31 only rows
    70-80 (the sternum). Hence: anterior row 89, posterior row 50, midline column (5 + 58) // 2 = 31, deepest
    midline row 60 (from slice 3), H_max|mid = 89 - 60 + 1 = 30.
    """
    mask = np.zeros((10, 100, 64), dtype=np.uint8)
    mask[3, 60:90, 10:54] = 1
    mask[5, 50:81, 5:59] = 1
    mask[5, 50:70, 31] = 0
    return mask


def test_breast_extent_follows_the_paper_measurements():
    extent = breast_extent(crafted_mask())
    assert extent.slices == (3, 6)
    assert (extent.anterior_row, extent.posterior_row) == (89, 50)
    assert extent.cols == (5, 59)
    assert extent.midline_col == 31
    assert extent.midline_posterior_row == 60
    assert extent.midline_depth == 30


def test_ov_crop_box_matches_the_hand_computed_box():
    # 30 rows + 16 mm at 1 mm = 46 rows -> 64 (multiple of 32), anchored at the anterior row 89: rows 26..89.
    box = ov_crop_box(crafted_mask(), (1.0, 1.0))
    assert box == CropBox(slices=(3, 6), rows=(26, 90), cols=(0, 64))
    assert box.shape == (3, 64, 64)


def test_paper_numbers_176_plus_16_give_192():
    mask = np.zeros((3, 352, 352), dtype=np.uint8)
    mask[1, 352 - 176:352, 100:252] = 1  # breast depth 176 rows at the midline, anterior edge at the last row
    assert ov_required_height(mask, (1.0, 1.0)) == 192
    box = ov_crop_box(mask, (1.0, 1.0))
    assert box.shape == (1, 192, 352)
    assert box.rows == (160, 352)


def test_safe_distance_scales_with_spacing():
    assert safe_distance_pixels(1.0) == 16
    assert safe_distance_pixels(0.5) == 32
    assert safe_distance_pixels(2.0) == 8
    assert safe_distance_pixels(0.7) == 23  # ceil(16 / 0.7): never less than 16 mm
    assert safe_distance_pixels(0.5, safe_distance_px=16) == 16
    mask = crafted_mask()
    assert ov_required_height(mask, (0.5, 0.5)) == 30 + 32
    assert ov_required_height(mask, (2.0, 2.0)) == 30 + 8
    assert ov_required_height(mask, (0.5, 0.5), safe_distance_px=16) == 46


def test_heights_are_multiples_and_boxes_stay_inside_the_image():
    mask = crafted_mask()
    for spacing in (0.3, 0.5, 0.8, 1.0, 2.0):
        box = ov_crop_box(mask, (spacing, spacing))
        assert box.shape[1] % 32 == 0 or box.shape[1] == mask.shape[1]
        assert 0 <= box.rows[0] < box.rows[1] <= mask.shape[1]
    # 30 + 64 = 94 -> 96 rows: more than the 90 rows below the anterior edge, so the box is shifted to start at 0.
    assert ov_crop_box(mask, (0.25, 0.25)).rows == (0, 96)
    # 30 + 128 -> 160 rows > 100 available: the box is the whole height.
    assert ov_crop_box(mask, (0.125, 0.125)).rows == (0, 100)
    assert ov_crop_box(mask, (1.0, 1.0), height=32).rows == (58, 90)


def test_uniform_boxes_take_the_largest_height_over_patients():
    shallow = np.zeros((4, 100, 64), dtype=np.uint8)
    shallow[1, 80:95, 10:50] = 1  # 15 rows + 16 -> 31 -> 32
    height, boxes = uniform_ov_boxes([crafted_mask(), shallow], [(1.0, 1.0), (1.0, 1.0)])
    assert height == 64
    assert [box.shape[1] for box in boxes] == [64, 64]
    assert boxes[1].rows == (31, 95)


def test_crop_box_apply_and_paste_round_trip_with_channels():
    volume = np.arange(2 * 10 * 100 * 64, dtype=np.float32).reshape(2, 10, 100, 64)
    box = ov_crop_box(crafted_mask(), (1.0, 1.0))
    cropped = box.apply(volume)
    assert cropped.shape == (2, 3, 64, 64)
    pasted = box.paste(cropped, volume.shape, fill=-1)
    assert np.array_equal(box.apply(pasted), cropped)
    assert np.all(pasted[:, :3] == -1) and np.all(pasted[:, :, 90:] == -1)
    assert CropBox.from_dict(box.to_dict()) == box


def test_empty_breast_mask_is_refused():
    with pytest.raises(InputError, match="breast mask is empty"):
        ov_crop_box(np.zeros((4, 32, 32), dtype=np.uint8), (1.0, 1.0))


def test_mask_box_covers_every_mask_at_full_width():
    lesion = np.zeros((10, 100, 64), dtype=np.uint8)
    lesion[7, 40, 3] = 1  # a lesion outside the breast mask still counts
    assert mask_box(crafted_mask(), None, lesion) == CropBox(slices=(3, 8), rows=(40, 90), cols=(0, 64))
    with pytest.raises(InputError, match="empty"):
        mask_box(np.zeros((2, 3, 4)), None)


def test_cropped_case_keeps_every_voxel_at_its_physical_place():
    rotation = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    grid = Grid((64, 100, 10), (0.7, 0.8, 2.0), (5.0, -3.0, 11.0), rotation)
    image = np.random.default_rng(0).random((2, 10, 100, 64), dtype=np.float32)
    case = PreparedCase("c", "p", image, ("pre", "post"), grid, breast=crafted_mask())
    box = mask_box(case.breast)
    cropped = case.cropped(box)
    assert cropped.image.shape == (2, 3, 40, 64) and cropped.breast.shape == (3, 40, 64) and cropped.lesions is None
    full, part = grid.image(image[1]), cropped.grid.image(cropped.image[1])
    for index_zyx in [(0, 0, 0), (2, 39, 63), (1, 17, 5)]:
        inside = (box.slices[0] + index_zyx[0], box.rows[0] + index_zyx[1], index_zyx[2])
        assert part.TransformIndexToPhysicalPoint(index_zyx[::-1]) == pytest.approx(
            full.TransformIndexToPhysicalPoint(inside[::-1]))
        assert cropped.image[1][index_zyx] == image[1][inside]
    assert not np.shares_memory(cropped.image, image) and not np.shares_memory(cropped.breast, case.breast)


def test_lesion_slices():
    lesions = np.zeros((8, 10, 10), dtype=np.uint8)
    lesions[2, 3, 3] = lesions[3, 4, 4] = lesions[6, 1, 1] = 1
    assert lesion_slice_indices(lesions).tolist() == [2, 3, 6]


def test_bag_geometry_nearest_point_and_breast_size():
    geometry = bag_geometry(crafted_mask(), (0.5, 0.5))
    assert geometry["nearest_point_px"] == 100 - 1 - 89
    assert geometry["breast_size_px"] == 89 - 50 + 1
    assert geometry["nearest_point_mm"] == pytest.approx(5.0)
    assert geometry["breast_size_mm"] == pytest.approx(20.0)


def test_table2_shapes_per_approach():
    lesions = np.zeros((10, 100, 64), dtype=np.uint8)
    lesions[4:6, 70:75, 20:25] = 1
    case = PreparedCase("p1", "p1", np.zeros((2, 10, 100, 64), dtype=np.float32), ("pre", "post"),
                        Grid((64, 100, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
                        breast=crafted_mask(), lesions=lesions)
    (row,) = table2_shapes([case])
    assert row["WV without BRS"] == row["WV with BRS"] == (64, 100, 10)
    assert row["SLS with BRS"] == (64, 100, 2)
    assert row["OV with BRS"] == (64, 64, 2)
    assert row["OV with BRS voxels"] < row["SLS with BRS voxels"] < row["WV with BRS voxels"]
