"""Segmentation metrics against MONAI and SimpleITK, the empty-mask convention, and ``breastseg evaluate``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_dice, compute_hausdorff_distance, compute_iou
from monai.metrics import get_confusion_matrix
from scipy import ndimage

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.evaluation.metrics import per_slice_metrics, segmentation_metrics
from BreastSegmentationLib.reports.tables import write_json

SPACING = (0.7, 0.7, 2.5)  # (x, y, z) = (i, j, k): thick slices, as in breast DCE-MRI
SPACING_KJI = tuple(reversed(SPACING))


def image_from(array: np.ndarray, spacing=SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((-40.0, 12.0, -7.5))
    return image


def random_blobs(rng: np.random.Generator, shape=(24, 40, 36), threshold=0.5) -> np.ndarray:
    """Smooth random blobs two voxels away from the border (so every surface voxel lies inside the image)."""
    mask = np.zeros(shape, dtype=bool)
    inner = tuple(slice(2, extent - 2) for extent in shape)
    mask[inner] = ndimage.gaussian_filter(rng.random([extent - 4 for extent in shape]), 1.5) > threshold
    return mask


def monai_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array[None, None], dtype=torch.float32)


def scipy_hd95(pred: np.ndarray, ref: np.ndarray) -> float:
    """Independent HD95: surface voxels by erosion, distances by scipy's exact EDT, max of the directed 95th."""
    edges = [mask ^ ndimage.binary_erosion(mask) for mask in (pred, ref)]
    directed = [ndimage.distance_transform_edt(~edges[1 - index], sampling=SPACING_KJI)[edges[index]]
                for index in (0, 1)]
    return max(float(np.percentile(distances, 95)) for distances in directed)


def sitk_surface_hd(pred: sitk.Image, ref: sitk.Image) -> float:
    """SimpleITK's Hausdorff distance between the 6-connected contours (MONAI's surface voxels)."""
    contours = [sitk.BinaryContour(mask, fullyConnected=False, backgroundValue=0, foregroundValue=1)
                for mask in (pred, ref)]
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(*contours)
    return hausdorff.GetHausdorffDistance()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_agree_with_monai_and_simpleitk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred_array, ref_array = random_blobs(rng), random_blobs(rng)
    pred, ref = image_from(pred_array), image_from(ref_array)
    metrics = segmentation_metrics(pred, ref)

    y_pred, y = monai_tensor(pred_array), monai_tensor(ref_array)
    assert metrics["dice"] == pytest.approx(compute_dice(y_pred, y, ignore_empty=False).item(), abs=1e-6)
    assert metrics["iou"] == pytest.approx(compute_iou(y_pred, y, ignore_empty=False).item(), abs=1e-6)
    confusion = get_confusion_matrix(y_pred, y)
    for name in ("precision", "recall"):
        assert metrics[name] == pytest.approx(compute_confusion_matrix_metric(name, confusion).item(), abs=1e-6)
    for key, percentile in (("hd", None), ("hd95", 95)):
        expected = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=percentile,
                                              spacing=SPACING_KJI)
        assert metrics[key] == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["hd95"] == pytest.approx(scipy_hd95(pred_array, ref_array), rel=1e-5)

    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(ref, pred)
    assert metrics["dice"] == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-9)
    assert metrics["iou"] == pytest.approx(overlap.GetJaccardCoefficient(), abs=1e-9)
    assert metrics["hd"] == pytest.approx(sitk_surface_hd(pred, ref), rel=1e-5)
    assert metrics["tp_voxels"] + metrics["fp_voxels"] == metrics["pred_voxels"] == int(pred_array.sum())


def test_two_cubes_at_known_distance_with_anisotropic_spacing() -> None:
    pred_array = np.zeros((20, 16, 16), dtype=bool)
    ref_array = np.zeros_like(pred_array)
    pred_array[2:6, 4:10, 4:10] = True  # k = 2..5
    ref_array[10:14, 4:10, 4:10] = True  # k = 10..13: farthest pair k = 2 <-> 10, 8 slices of 2.5 mm
    pred, ref = image_from(pred_array), image_from(ref_array)
    metrics = segmentation_metrics(pred, ref)
    assert metrics["hd"] == pytest.approx(20.0)
    hausdorff = sitk.HausdorffDistanceImageFilter()  # on whole masks: equal to the surface HD for disjoint cubes
    hausdorff.Execute(pred, ref)
    assert metrics["hd"] == pytest.approx(hausdorff.GetHausdorffDistance())
    assert metrics["dice"] == metrics["iou"] == metrics["precision"] == metrics["recall"] == 0.0


def test_parallel_planes_give_hd_and_hd95_exactly() -> None:
    pred_array = np.zeros((10, 12, 12), dtype=bool)
    ref_array = np.zeros_like(pred_array)
    pred_array[2, 3:9, 3:9] = True
    ref_array[6, 3:9, 3:9] = True  # every surface voxel is 4 slices (10 mm) from the other plane
    metrics = segmentation_metrics(image_from(pred_array), image_from(ref_array))
    assert metrics["hd"] == pytest.approx(10.0) and metrics["hd95"] == pytest.approx(10.0)
    shifted = np.roll(pred_array, 3, axis=2)  # the same plane moved 3 voxels along x (i), 0.7 mm each
    metrics = segmentation_metrics(image_from(shifted), image_from(pred_array))
    assert metrics["hd"] == pytest.approx(2.1)
    assert metrics["dice"] == pytest.approx(2 * 18 / 72)


def test_hd95_is_the_max_of_the_two_directed_percentiles() -> None:
    ref_array = np.zeros((16, 24, 24), dtype=bool)
    ref_array[2:8, 2:8, 2:8] = True  # a cube with 152 surface voxels
    pred_array = ref_array.copy()
    pred_array[10:12, 18:20, 18:21] = True  # plus a far 12-voxel blob: 7 % of its surface, 4 % of both surfaces
    metrics = segmentation_metrics(image_from(pred_array), image_from(ref_array))
    blob_distance = scipy_hd95(pred_array, ref_array)
    assert blob_distance > 10.0  # the pooled 95th percentile (medpy, seg-metrics) would be 0 here
    assert metrics["hd95"] == pytest.approx(blob_distance, rel=1e-5)
    expected = compute_hausdorff_distance(monai_tensor(pred_array), monai_tensor(ref_array), include_background=True,
                                          percentile=95, spacing=SPACING_KJI)
    assert metrics["hd95"] == pytest.approx(expected.item(), rel=1e-5)


def test_empty_mask_convention() -> None:
    empty = np.zeros((6, 8, 8), dtype=bool)
    lesion = empty.copy()
    lesion[2:4, 2:5, 2:5] = True
    both_empty = segmentation_metrics(image_from(empty), image_from(empty))
    assert [both_empty[key] for key in ("dice", "iou", "precision", "recall")] == [1.0] * 4
    assert both_empty["hd"] is None and both_empty["hd95"] is None
    mama_mia = segmentation_metrics(image_from(empty), image_from(empty), both_empty_score=0.0)
    assert mama_mia["dice"] == 0.0
    for pred, ref in ((empty, lesion), (lesion, empty)):
        one_empty = segmentation_metrics(image_from(pred), image_from(ref))
        assert [one_empty[key] for key in ("dice", "iou", "precision", "recall")] == [0.0] * 4
        assert one_empty["hd"] is None and one_empty["hd95"] is None
        json.loads(json.dumps(one_empty, allow_nan=False))


def test_probability_maps_are_thresholded_above_one_half() -> None:
    probabilities = np.zeros((6, 8, 8), dtype=np.float32)
    probabilities[2, 2:4, 2:4] = 0.3
    probabilities[3, 2:4, 2:4] = 0.8
    reference = np.zeros((6, 8, 8), dtype=bool)
    reference[3, 2:4, 2:4] = True
    image = sitk.GetImageFromArray(probabilities)
    image.SetSpacing(SPACING)
    image.SetOrigin((-40.0, 12.0, -7.5))
    assert segmentation_metrics(image, image_from(reference))["dice"] == 1.0


def test_per_slice_metrics_match_single_slice_metrics(rng: np.random.Generator) -> None:
    pred_array, ref_array = random_blobs(rng), random_blobs(rng)
    rows = per_slice_metrics(image_from(pred_array), image_from(ref_array))
    assert [row["slice"] for row in rows] == list(range(pred_array.shape[0]))
    assert sum(row["tp_voxels"] for row in rows) == int((pred_array & ref_array).sum())
    for row, pred_slice, ref_slice in zip(rows, pred_array, ref_array):
        if ref_slice.any():
            expected = compute_dice(monai_tensor(pred_slice), monai_tensor(ref_slice), ignore_empty=False).item()
            assert row["dice"] == pytest.approx(expected, abs=1e-6)
        elif not pred_slice.any():
            assert row["dice"] == 1.0 and row["recall"] == 1.0
    along_i = per_slice_metrics(image_from(pred_array), image_from(ref_array), axis=0)
    assert len(along_i) == pred_array.shape[2]


def test_mismatched_geometry_is_an_input_error() -> None:
    mask = np.zeros((6, 8, 8), dtype=bool)
    with pytest.raises(InputError, match="different grids"):
        segmentation_metrics(image_from(mask), image_from(mask, spacing=(0.7, 0.7, 3.0)))


# ---- breastseg evaluate -------------------------------------------------------------------------------------------

def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def case(tmp_path, rng: np.random.Generator) -> dict[str, str]:
    """A predicted and a reference lesion mask with pre- and post-contrast images, written as NIfTI."""
    ref_array = np.zeros((12, 32, 32), dtype=bool)
    ref_array[4:8, 8:16, 8:16] = True  # 256 voxels = 313.6 mm3
    ref_array[9, 25, 25] = True  # a 1.2 mm3 lesion the prediction misses
    pred_array = np.zeros_like(ref_array)
    pred_array[4:8, 8:16, 9:17] = True  # the large lesion, one voxel off along i
    pred_array[2, 28:30, 2:4] = True  # a false positive of 4 voxels = 4.9 mm3
    pre = rng.normal(100.0, 5.0, ref_array.shape).astype(np.float32)
    enhancing = np.zeros_like(ref_array)
    enhancing[4:8, 8:16, 8:16] = True
    post = pre * np.where(enhancing, 1.8, 1.1).astype(np.float32)
    paths = {"pred": write(image_from(pred_array), tmp_path / "pred.nii.gz"),
             "ref": write(image_from(ref_array), tmp_path / "ref.nii.gz")}
    for name, array in (("pre", pre), ("post", post)):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(image_from(ref_array))
        paths[name] = write(image, tmp_path / f"{name}.nii.gz")
    return paths


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_cli_writes_metrics_and_tables(case: dict[str, str], tmp_path, capsys) -> None:
    out = tmp_path / "evaluation"
    code = main(["--progress", "none", "evaluate", "--pred", case["pred"], "--ref", case["ref"], "--pre", case["pre"],
                 "--post", case["post"], "--image", case["post"], "--out", str(out)])
    assert code == 0
    assert "dice" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == [
        "lesion_matches.csv", "lesions_pred.csv", "lesions_ref.csv", "metrics.json", "per_slice.csv"]
    metrics = json.loads((out / "metrics.json").read_text())
    expected = segmentation_metrics(sitk.ReadImage(case["pred"]), sitk.ReadImage(case["ref"]))
    for key in ("dice", "iou", "precision", "recall", "hd", "hd95"):
        assert metrics[key] == pytest.approx(expected[key])
    bins = {volume_bin["label"]: volume_bin for volume_bin in metrics["lesions"]["bins"]}
    assert (bins["<10"]["fp"], bins["<10"]["fn"], bins[">=20"]["tp"]) == (1, 1, 1)
    assert metrics["lesions"]["fp"] == metrics["lesions"]["fn"] == 1
    assert "empty_masks" in metrics["conventions"] and "hd95" in metrics["conventions"]
    assert len(read_csv(out / "per_slice.csv")) == 12
    reference_lesions = read_csv(out / "lesions_ref.csv")
    assert [row["voxels"] for row in reference_lesions] == ["256", "1"]
    assert float(reference_lesions[0]["mean_enhancement"]) == pytest.approx(0.8, abs=1e-4)
    assert float(reference_lesions[1]["mean_enhancement"]) == pytest.approx(0.1, abs=1e-4)
    assert json.loads(reference_lesions[0]["bbox_size_ijk"]) == [8, 8, 4]
    matches = read_csv(out / "lesion_matches.csv")
    assert sorted((row["source"], row["status"]) for row in matches) == [
        ("pred", "fp"), ("pred", "tp"), ("ref", "fn"), ("ref", "tp")]


def test_evaluate_cli_with_empty_masks_writes_headers(tmp_path) -> None:
    empty = write(image_from(np.zeros((6, 8, 8), dtype=bool)), tmp_path / "empty.nii.gz")
    out = tmp_path / "evaluation"
    assert main(["--progress", "none", "evaluate", "--pred", empty, "--ref", empty, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dice"] == 1.0 and metrics["hd95"] is None
    assert (out / "lesions_pred.csv").read_text().startswith("id,voxels,volume_mm3")


def bad_inputs(case: dict[str, str], tmp_path) -> dict[str, list[str]]:
    flat = write(image_from(np.zeros((1, 8, 8), dtype=bool))[:, :, 0], tmp_path / "flat.nii.gz")
    with_nan = sitk.ReadImage(case["pre"])
    with_nan[3, 3, 3] = float("nan")
    nan_path = write(with_nan, tmp_path / "nan.nrrd")  # SimpleITK 2.5 reads a NaN stored in NIfTI back as 0
    other_grid = sitk.ReadImage(case["pred"])
    other_grid.SetSpacing((0.7, 0.7, 3.0))
    other_grid_path = write(other_grid, tmp_path / "other_grid.nii.gz")
    damaged = tmp_path / "damaged.nii.gz"
    damaged.write_bytes(b"not an image at all")
    four_d = sitk.JoinSeries([sitk.ReadImage(case["pre"])] * 2)
    four_d_path = write(four_d, tmp_path / "four_d.nii.gz")
    return {
        "2-D": ["--pred", case["pred"], "--ref", flat],
        "4-D": ["--pred", case["pred"], "--ref", case["ref"], "--image", four_d_path],
        "damaged": ["--pred", str(damaged), "--ref", case["ref"]],
        "NaN": ["--pred", case["pred"], "--ref", case["ref"], "--image", nan_path],
        "different grids": ["--pred", other_grid_path, "--ref", case["ref"]],
        "file not found": ["--pred", str(tmp_path / "missing.nii.gz"), "--ref", case["ref"]],
        "go together": ["--pred", case["pred"], "--ref", case["ref"], "--pre", case["pre"]],
        "increasing": ["--pred", case["pred"], "--ref", case["ref"], "--bins", "20", "10"],
        "between 0 and 1": ["--pred", case["pred"], "--ref", case["ref"], "--both-empty-score", "2"],
    }


def test_evaluate_cli_bad_input_exits_2_and_writes_nothing(case: dict[str, str], tmp_path, capsys) -> None:
    for problem, arguments in bad_inputs(case, tmp_path).items():
        out = tmp_path / "out" / problem.replace(" ", "_")
        code = main(["--progress", "none", "evaluate", *arguments, "--out", str(out)])
        error = capsys.readouterr().err
        assert code == 2, problem
        assert problem in error and error.count("\n") == 1, error
        assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "metrics.json").write_text("{}")
    assert main(["--progress", "none", "evaluate", "--pred", case["pred"], "--ref", str(tmp_path / "missing.nii"),
                 "--out", str(kept)]) == 2
    assert [path.name for path in kept.iterdir()] == ["metrics.json"] and (kept / "metrics.json").read_text() == "{}"


def test_metrics_json_is_strict_json(tmp_path) -> None:
    mask = np.zeros((6, 8, 8), dtype=bool)
    path = write_json(segmentation_metrics(image_from(mask), image_from(mask)), tmp_path / "m.json")
    assert json.loads(path.read_text())["hd"] is None
