"""Lesion components, lesion tables and lesion matching by volume bin."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.evaluation import lesions
from BreastSegmentationLib.evaluation.lesions import (
    bin_label,
    evaluate_case,
    label_lesions,
    lesion_table,
    longest_diameters_mm,
    match_lesions,
    volume_bins,
)
from BreastSegmentationLib.io.geometry import ijk_to_ras_matrix
from BreastSegmentationLib.reports.tables import write_json


def mask_like(array: np.ndarray, grid: sitk.Image | None = None, spacing=(0.7, 0.7, 2.5)) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    if grid is None:
        image.SetSpacing(spacing)
    else:
        image.CopyInformation(grid)
    return image


def test_diagonal_neighbours_are_one_lesion() -> None:
    array = np.zeros((5, 5, 5), dtype=bool)
    array[1, 1, 1] = array[2, 2, 2] = True  # touching only by a corner
    array[4, 4, 0] = True
    labels = label_lesions(mask_like(array))
    assert int(sitk.GetArrayViewFromImage(labels).max()) == 2
    face_only = sitk.ConnectedComponent(mask_like(array), False)
    assert int(sitk.GetArrayViewFromImage(face_only).max()) == 3


def test_lesions_are_numbered_from_the_largest() -> None:
    array = np.zeros((6, 10, 10), dtype=bool)
    array[0, 0, 0] = True
    array[3:5, 3:7, 3:7] = True
    rows = lesion_table(mask_like(array))
    assert [row["voxels"] for row in rows] == [32, 1]
    assert [row["id"] for row in rows] == [1, 2]


def test_volume_bins_labels_and_validation() -> None:
    assert [volume_bin["label"] for volume_bin in volume_bins()] == ["<10", "10-20", ">=20"]
    assert volume_bins([5])[1] == {"label": ">=5", "min_mm3": 5.0, "max_mm3": None}
    for bad in ([], [20, 10], [0, 10], [10, 10]):
        with pytest.raises(InputError, match="positive and increasing"):
            volume_bins(bad)
    # ITK's volume of 25 voxels of 0.6 x 0.6 x 2.5 mm, 22.5 mm3 on paper
    assert bin_label(22.499999999999996, volume_bins([22.5])) == ">=22.5"
    assert bin_label(9.99, volume_bins()) == "<10" and bin_label(20.0, volume_bins()) == ">=20"


def lesion_run(array: np.ndarray, start: tuple[int, int, int], voxels: int) -> None:
    """Mark a straight run of ``voxels`` along i starting at (k, j, i) = ``start``."""
    k, j, i = start
    array[k, j, i:i + voxels] = True


def test_matching_counts_lesions_in_volume_bins() -> None:
    spacing = (0.8, 0.625, 2.0)  # 1 mm3 voxels: lesion volumes read as voxel counts
    ref = np.zeros((12, 20, 40), dtype=bool)
    pred = np.zeros_like(ref)
    lesion_run(ref, (1, 2, 0), 4)    # 4 mm3, missed                    -> FN <10
    lesion_run(ref, (3, 2, 0), 10)   # 10 mm3, found by a 2-voxel hit   -> TP 10-20
    lesion_run(pred, (3, 2, 8), 2)   #   its 2 mm3 match
    lesion_run(ref, (5, 2, 0), 20)   # 20 mm3, missed                    -> FN >=20
    lesion_run(ref, (7, 2, 0), 15)   # 15 mm3 and 30 mm3 lesions, both hit by one component
    lesion_run(ref, (7, 4, 0), 30)
    pred[7, 2:5, 5] = True           #   3 voxels bridging rows j = 2..4
    lesion_run(pred, (9, 10, 0), 19)  # 19 mm3, no reference lesion      -> FP 10-20
    lesion_run(pred, (9, 14, 0), 25)  # 25 mm3                           -> FP >=20
    pred[11, 18, 39] = True           # 1 mm3                            -> FP <10
    result = match_lesions(mask_like(pred, spacing=spacing), mask_like(ref, spacing=spacing))
    counts = {row["label"]: (row["tp"], row["fp"], row["fn"]) for row in result["bins"]}
    assert counts == {"<10": (0, 1, 1), "10-20": (2, 1, 0), ">=20": (1, 1, 1)}
    assert (result["tp"], result["fp"], result["fn"]) == (3, 3, 2)
    by_status = sorted((row["source"], row["status"], round(row["volume_mm3"])) for row in result["lesions"])
    assert ("pred", "tp", 3) in by_status and ("ref", "fn", 20) in by_status
    bridge = next(row for row in result["lesions"] if row["source"] == "pred" and round(row["volume_mm3"]) == 3)
    assert len(bridge["matched_ids"]) == 2
    custom = match_lesions(mask_like(pred, spacing=spacing), mask_like(ref, spacing=spacing), bins=(5.0,))
    assert [(volume_bin["label"], volume_bin["fn"]) for volume_bin in custom["bins"]] == [("<5", 1), (">=5", 1)]


def test_lesion_table_centroid_in_ras_and_bounding_box(oblique_image: sitk.Image) -> None:
    array = np.zeros(sitk.GetArrayViewFromImage(oblique_image).shape, dtype=bool)  # (7, 11, 13) KJI
    array[2:5, 3:6, 4:9] = True
    mask = mask_like(array, grid=oblique_image)
    (row,) = lesion_table(mask)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(mask)
    x, y, z = shapes.GetCentroid(1)
    assert row["centroid_ras_mm"] == pytest.approx([-x, -y, z])
    mean_index = np.array([np.mean(axis) for axis in reversed(np.nonzero(array))] + [1.0])
    assert row["centroid_ras_mm"] == pytest.approx((ijk_to_ras_matrix(oblique_image) @ mean_index)[:3])
    assert row["bbox_start_ijk"] == [4, 3, 2] and row["bbox_size_ijk"] == [5, 3, 3]
    assert row["voxels"] == 45
    assert row["volume_mm3"] == pytest.approx(45 * 0.7 * 0.8 * 2.0)


def test_longest_diameter_of_known_segments() -> None:
    array = np.zeros((12, 12, 12), dtype=bool)
    array[1, 1, 1:9] = True   # 8 voxels along i: 7 x 0.7 mm
    array[3:11, 8, 8] = True  # 8 voxels along k: 7 x 2.5 mm
    diameters = [row["longest_diameter_mm"] for row in lesion_table(mask_like(array))]
    assert sorted(diameters) == pytest.approx([4.9, 17.5])


def test_longest_diameter_equals_itk_feret_diameter(oblique_image: sitk.Image, monkeypatch) -> None:
    rng = np.random.default_rng(7)
    array = ndimage.gaussian_filter(rng.random((7, 11, 13)), 1.0) > 0.5
    array[0, :, :] = True  # a flat, one-slice lesion as well
    labels = label_lesions(mask_like(array, grid=oblique_image))
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.ComputeFeretDiameterOn()
    shapes.Execute(labels)
    expected = {label: shapes.GetFeretDiameter(label) for label in shapes.GetLabels()}
    assert longest_diameters_mm(labels) == pytest.approx(expected)
    monkeypatch.setattr(lesions, "PAIRWISE_POINT_LIMIT", 3)  # every lesion through the convex-hull path
    assert longest_diameters_mm(labels) == pytest.approx(expected)


def test_relative_enhancement_columns_and_safe_denominator() -> None:
    shape = (6, 10, 10)
    array = np.zeros(shape, dtype=bool)
    array[1, 1:3, 1:3] = True      # lesion 1 (4 voxels): pre 100, post 150 and one voxel 300
    array[4, 6, 6] = True          # lesion 2 (1 voxel): pre 0 -> denominator floor 1 % of p99(pre) = 1
    pre = np.full(shape, 100.0, dtype=np.float32)
    post = np.full(shape, 110.0, dtype=np.float32)
    post[1, 1:3, 1:3] = 150.0
    post[1, 1, 1] = 300.0
    pre[4, 6, 6], post[4, 6, 6] = 0.0, 5.0
    mask = mask_like(array)
    pre_image, post_image = (sitk.GetImageFromArray(values) for values in (pre, post))
    for image in (pre_image, post_image):
        image.CopyInformation(mask)
    rows = lesion_table(mask, pre=pre_image, post=post_image, intensity=post_image)
    assert lesions.relative_enhancement(pre_image, post_image).GetPixelID() == sitk.sitkFloat32
    assert rows[0]["mean_enhancement"] == pytest.approx((0.5 * 3 + 2.0) / 4)
    assert rows[0]["peak_enhancement"] == pytest.approx(2.0)
    assert rows[1]["mean_enhancement"] == pytest.approx(5.0)
    assert rows[0]["mean_intensity"] == pytest.approx((150 * 3 + 300) / 4)
    assert rows[0]["peak_intensity"] == pytest.approx(300.0)
    with pytest.raises(InputError, match="both"):
        lesion_table(mask, pre=pre_image)
    shifted = sitk.Image(pre_image)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="different grids"):
        lesion_table(mask, pre=shifted, post=post_image)


def test_study_lesion_table_on_the_lesions_block_equals_the_whole_grid_table(oblique_image, rng) -> None:
    shape = sitk.GetArrayViewFromImage(oblique_image).shape  # (7, 11, 13) KJI, oblique grid
    array = np.zeros(shape, dtype=np.uint16)
    array[2:4, 3:6, 4:7] = 1
    array[5, 8:10, 9:12] = 2  # the block of both lesions starts at (4, 3, 2), not at the grid's corner
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(oblique_image)
    pre_values = sitk.GetArrayFromImage(oblique_image)
    pre_values[:, :, :3] = 5000.0  # outside the lesions' block, and they set the whole image's enhancement floor
    pre_values[2, 3, 4] = 1.0  # a lesion voxel whose enhancement divides by that floor
    pre = sitk.GetImageFromArray(pre_values)
    post = sitk.GetImageFromArray(pre_values * rng.uniform(1.0, 2.0, size=shape).astype(np.float32) + 10.0)
    for image in (pre, post):
        image.CopyInformation(oblique_image)
    expected = lesions.lesion_label_table(labels, lesions.relative_enhancement(pre, post))
    rows = lesions.study_lesion_table(labels, pre, post)
    assert [row["bbox_start_ijk"] for row in rows] == [[4, 3, 2], [9, 8, 5]]
    assert len(rows) == len(expected) == 2
    for row, wanted in zip(rows, expected):
        assert row.keys() == wanted.keys()
        for key, value in wanted.items():
            assert row[key] == pytest.approx(value), key
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt16)
    empty.CopyInformation(labels)
    assert lesions.study_lesion_table(empty, pre, post) == []


def test_empty_mask_has_no_lesions() -> None:
    empty = mask_like(np.zeros((4, 5, 6), dtype=bool))
    assert lesion_table(empty) == []
    result = match_lesions(empty, empty)
    assert (result["tp"], result["fp"], result["fn"], result["lesions"]) == (0, 0, 0, [])


def test_evaluate_case_is_json_ready(tmp_path, rng: np.random.Generator) -> None:
    ref = ndimage.gaussian_filter(rng.random((10, 24, 24)), 1.5) > 0.55
    pred = ndimage.binary_dilation(ref)
    result = evaluate_case(mask_like(pred), mask_like(ref))
    metrics = result["metrics"]
    assert {"dice", "iou", "precision", "recall", "hd", "hd95", "lesions", "conventions"} <= set(metrics)
    assert metrics["recall"] == 1.0 and metrics["lesions"]["fn"] == 0
    assert len(result["lesions_ref"]) == int(sitk.GetArrayFromImage(label_lesions(mask_like(ref))).max())
    write_json(metrics, tmp_path / "metrics.json")
