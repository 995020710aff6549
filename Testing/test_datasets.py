"""Datasets: loading and validation, the four slice approaches, 3-D patches, augmentation, BreastDM and nnU-Net."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BreastSegmentationLib.data.augmentation import (
    RandContrastUptaked,
    augment,
    spatial_transforms,
    training_transforms,
)
from BreastSegmentationLib.data.datasets import CaseRecord, load_dataset, validate_dataset, write_manifest
from BreastSegmentationLib.data.interop import export_nnunet_raw, import_breastdm, import_nnunet_raw
from BreastSegmentationLib.data.patches import (
    BACKGROUND,
    ENHANCING,
    ENHANCING_QUANTILE,
    LESION,
    PatchDataset,
    enhancing_classes,
)
from BreastSegmentationLib.data.preprocessing import ENHANCEMENT_RANGE, prepare_case
from BreastSegmentationLib.data.slices import MAX_LESION_WEIGHT, Approach, SliceDataset, lesion_weights, slice_repeats
from BreastSegmentationLib.errors import InputError


def case_images(rng: np.random.Generator, shape_zyx=(8, 24, 24), spacing=(1.0, 1.0, 2.0), breast_rows=(2, 10),
                lesion_slices=(3, 5), lesion_box=((4, 7), (8, 12))) -> dict[str, sitk.Image]:
    """LPS images (low rows anterior): a body, a breast box in ``breast_rows`` and an enhancing box lesion."""
    pre = np.abs(rng.normal(0.0, 5.0, shape_zyx)).astype(np.float32)
    pre[:, 2:-2, 2:-2] += 200.0
    breast = np.zeros(shape_zyx, dtype=np.uint8)
    breast[1:-1, slice(*breast_rows), 2:-2] = 1
    lesions = np.zeros(shape_zyx, dtype=np.uint8)
    lesions[slice(*lesion_slices), slice(*lesion_box[0]), slice(*lesion_box[1])] = 1
    arrays = {"pre": pre, "post": pre * 1.05 + 150.0 * lesions, "breast": breast, "lesions": lesions}
    images = {}
    for role, array in arrays.items():
        images[role] = sitk.GetImageFromArray(array)
        images[role].SetSpacing(spacing)
    return images


def write_case(folder: Path, images: dict[str, sitk.Image], suffix: str = ".nii.gz") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, image in images.items():
        paths[role] = folder / f"{role}{suffix}"
        sitk.WriteImage(image, str(paths[role]))
    return paths


@pytest.fixture
def dataset_folder(tmp_path, rng) -> Path:
    root = tmp_path / "dataset"
    for index in range(3):
        write_case(root / f"case_{index:03d}", case_images(rng), suffix=(".nii.gz", ".nrrd", ".mha")[index])
    (root / "case_002" / "case.json").write_text(json.dumps({"patient_id": "patient_A"}))
    (root / "notes").mkdir()
    return root


# Loading --------------------------------------------------------------------------------------------------------------

def test_folder_loading(dataset_folder):
    records = load_dataset(dataset_folder, require=("breast", "lesions"))
    assert [record.case_id for record in records] == ["case_000", "case_001", "case_002"]
    assert [record.patient_id for record in records] == ["case_000", "case_001", "patient_A"]
    assert records[1].pre == dataset_folder / "case_001" / "pre.nrrd"
    validate_dataset(records, "lesion", min_patients=3)
    validate_dataset(records, "breast")


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.json"])
def test_manifest_round_trip(dataset_folder, tmp_path, name):
    records = load_dataset(dataset_folder)
    manifest = write_manifest(records, tmp_path / "lists" / name)
    text = manifest.read_text()
    assert "../dataset/case_000/pre.nii.gz" in text
    assert load_dataset(manifest) == records


def test_csv_manifest_with_optional_columns(dataset_folder, tmp_path):
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "pre", "post", "lesions"])
        writer.writerow(["a", "dataset/case_000/pre.nii.gz", "dataset/case_000/post.nii.gz", ""])
    (record,) = load_dataset(manifest)
    assert record == CaseRecord("a", "a", tmp_path / "dataset/case_000/pre.nii.gz",
                                tmp_path / "dataset/case_000/post.nii.gz")
    with pytest.raises(InputError, match="case a has no lesions mask"):
        load_dataset(manifest, require=("lesions",))


def test_loading_errors_name_the_problem(tmp_path, dataset_folder):
    with pytest.raises(InputError, match="dataset not found"):
        load_dataset(tmp_path / "nothing")
    (dataset_folder / "case_001" / "post.nrrd").unlink()
    with pytest.raises(InputError, match=r"case_001: no post image") as error:
        load_dataset(dataset_folder)
    assert str(dataset_folder) in str(error.value)
    manifest = tmp_path / "bad.csv"
    manifest.write_text("case_id,pre\nx,a.nii.gz\n")
    with pytest.raises(InputError, match="no post column"):
        load_dataset(manifest)
    manifest.write_text("case_id,pre,post\nx,a.nii.gz,b.nii.gz\nx,c.nii.gz,d.nii.gz\n")
    with pytest.raises(InputError, match="repeated: x"):
        load_dataset(manifest)
    with pytest.raises(InputError, match="no case folders"):
        load_dataset(dataset_folder / "notes")


# Validation -----------------------------------------------------------------------------------------------------------

def one_record(tmp_path: Path, rng, suffix: str = ".nii.gz", **changes) -> CaseRecord:
    images = case_images(rng)
    images.update(changes)
    paths = write_case(tmp_path / "case", images, suffix)
    return CaseRecord("case", "case", **paths)


def test_validation_reports_a_missing_file(tmp_path, rng):
    record = one_record(tmp_path, rng)
    record.post.unlink()
    with pytest.raises(InputError, match="file not found") as error:
        validate_dataset([record], "lesion")
    assert str(record.post) in str(error.value)


def test_validation_reports_mask_geometry(tmp_path, rng):
    shifted = case_images(rng)["lesions"]
    shifted.SetOrigin((0.0, 5.0, 0.0))
    record = one_record(tmp_path, rng, lesions=shifted)
    with pytest.raises(InputError, match="grid differs from the pre-contrast") as error:
        validate_dataset([record], "lesion")
    assert str(record.lesions) in str(error.value)


def test_validation_reports_empty_lesion_mask_only_for_the_lesion_task(tmp_path, rng):
    empty = sitk.Image(case_images(rng)["lesions"])
    empty = empty * 0
    record = one_record(tmp_path, rng, lesions=empty)
    with pytest.raises(InputError, match="lesions mask is empty"):
        validate_dataset([record], "lesion")
    validate_dataset([record], "breast")


def test_validation_reports_a_post_contrast_image_elsewhere(tmp_path, rng):
    far = case_images(rng)["post"]
    far.SetOrigin((0.0, 0.0, 500.0))
    record = one_record(tmp_path, rng, post=far)
    with pytest.raises(InputError, match="covers 0% of the pre-contrast image") as error:
        validate_dataset([record], "lesion")
    assert str(error.value).startswith(str(record.post))


def test_validation_reports_too_few_patients(tmp_path, rng):
    record = one_record(tmp_path, rng)
    with pytest.raises(InputError, match="1 patient"):
        validate_dataset([record, CaseRecord("case2", "case", record.pre, record.post, lesions=record.lesions)],
                         "lesion", min_patients=2)


def test_validation_reports_bad_volumes_and_lists_every_problem(tmp_path, rng):
    images = case_images(rng)
    nan_pre = sitk.GetArrayFromImage(images["pre"])
    nan_pre[0, 0, :3] = np.nan
    pre = sitk.GetImageFromArray(nan_pre)
    pre.CopyInformation(images["pre"])
    record = one_record(tmp_path, rng, ".mha", pre=pre, breast=images["post"])  # ITK's NIfTI writer drops NaN
    with pytest.raises(InputError) as error:
        validate_dataset([record], "lesion")
    message = str(error.value)
    assert "2 problems" in message
    assert f"{record.pre}: pre-contrast image contains 3 NaN voxels" in message
    assert f"{record.breast}: breast mask is not a mask" in message


# Slice datasets -------------------------------------------------------------------------------------------------------

@pytest.fixture
def prepared(rng):
    """A 16 x 96 x 64 case at 1 mm: breast 30 rows deep, lesion in 4 slices; in RAS the breast is at rows 66-95."""
    images = case_images(rng, shape_zyx=(16, 96, 64), breast_rows=(0, 30), lesion_slices=(6, 10),
                         lesion_box=((10, 16), (20, 28)))
    return prepare_case(**images, case_id="p1")


def test_four_approaches_counts_and_shapes(prepared):
    datasets = {approach: SliceDataset([prepared], approach) for approach in Approach}
    assert [len(datasets[approach]) for approach in Approach] == [16, 16, 4, 4]
    for approach in (Approach.WV_NO_BRS, Approach.WV_BRS, Approach.SLS):
        assert datasets[approach][0]["image"].shape == (2, 96, 64)
    assert datasets[Approach.OV].ov_height == 64  # 30 rows + 16 mm -> 46 -> 64
    assert datasets[Approach.OV].boxes["p1"].rows == (32, 96)
    sample = datasets[Approach.OV][0]
    assert sample["image"].shape == (2, 64, 64) and sample["label"].shape == (1, 64, 64)
    assert sample["image"].dtype == torch.float32 and sample["case_id"] == "p1"
    assert [datasets[Approach.SLS][index]["slice"] for index in range(4)] == [6, 7, 8, 9]
    for index in range(4):
        assert datasets[Approach.SLS][index]["label"].sum() > 0
        assert datasets[Approach.OV][index]["label"].sum() == datasets[Approach.SLS][index]["label"].sum()


def test_brs_masking_zeroes_everything_outside_the_breast(prepared):
    without, masked = SliceDataset([prepared], Approach.WV_NO_BRS), SliceDataset([prepared], Approach.WV_BRS)
    for index in range(len(masked)):
        outside = ~torch.from_numpy(prepared.breast[index].astype(bool))
        assert torch.all(masked[index]["image"][:, outside] == 0)
        assert torch.equal(masked[index]["image"][:, ~outside], without[index]["image"][:, ~outside])
    assert torch.any(without[0]["image"] != 0)


def test_slice_datasets_hold_no_copy_of_the_images(prepared):
    """Training holds a few hundred prepared studies: a dataset over them must not need their images twice."""
    tracemalloc.start()
    dataset = SliceDataset([prepared], Approach.OV, breast_slices=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < prepared.image.nbytes / 2  # masks and labels take 1 byte a voxel, the image 8
    number, (rows, cols) = dataset[0]["slice"], (slice(*dataset.boxes["p1"].rows), slice(*dataset.boxes["p1"].cols))
    expected = (prepared.image[:, number] * prepared.breast[number])[:, rows, cols]
    assert np.array_equal(dataset[0]["image"].numpy(), expected)
    assert np.array_equal(dataset.input_slices(0)[0], expected)


def test_predicted_breast_masks_replace_the_ground_truth(prepared):
    predicted = np.zeros(prepared.shape, dtype=np.uint8)
    predicted[:, 80:96, 10:40] = 1
    dataset = SliceDataset([prepared], Approach.WV_BRS, breast_masks={"p1": predicted})
    image = dataset[8]["image"]
    assert torch.all(image[:, :80] == 0) and torch.any(image[:, 80:, 10:40] != 0)
    assert torch.equal(dataset[8]["label"][0], torch.from_numpy(prepared.lesions[8].astype(np.float32)))


def test_slices_pad_to_multiples_of_32_and_breast_task(rng):
    case = prepare_case(**case_images(rng, shape_zyx=(6, 40, 50)), case_id="small")
    dataset = SliceDataset([case], Approach.WV_NO_BRS, task="breast")
    assert dataset[0]["image"].shape == (2, 64, 64)
    assert torch.equal(dataset[2]["label"][0, :40, :50], torch.from_numpy(case.breast[2].astype(np.float32)))
    assert torch.all(dataset[2]["label"][0, 40:] == 0)
    with pytest.raises(InputError, match="whole unmasked volumes"):
        SliceDataset([case], Approach.OV, task="breast")


def test_slice_repeats_show_small_lesions_as_often_as_large_ones():
    lesions = np.zeros((16, 20, 20), dtype=np.uint8)
    lesions[2:12, 2:12, 2:12] = 1  # a mass on 10 slices
    lesions[5:7, 15:17, 15:17] = 1  # a focus on 2 of them
    lesions[13:14, 15:16, 15:16] = 1  # a focus on one slice
    np.testing.assert_array_equal(slice_repeats(lesions), np.ones(16))
    np.testing.assert_array_equal(slice_repeats(lesions, lesion_slice_repeats=3), [1, 1] + [3] * 10 + [1, 3, 1, 1])
    balanced = slice_repeats(lesions, lesion_slice_repeats=3, lesion_visits=8)
    np.testing.assert_array_equal(balanced, [1, 1, 3, 3, 3, 4, 4, 3, 3, 3, 3, 3, 1, 8, 1, 1])


def test_slice_dataset_lists_each_lesion_on_at_least_the_asked_visits(rng):
    case = prepare_case(**case_images(rng, shape_zyx=(12, 40, 40)), case_id="p1")
    case.lesions[:] = 0
    case.lesions[3:5, 10:13, 10:13] = 1
    case.lesions[6:11, 20:30, 20:30] = 1
    plain = SliceDataset([case], Approach.WV_NO_BRS)
    balanced = SliceDataset([case], Approach.WV_NO_BRS, lesion_visits=10)
    visits = np.array([balanced.slice_numbers[0][local] for _, local in balanced.index])
    assert np.isin(visits, [3, 4]).sum() == 10 and np.isin(visits, range(6, 11)).sum() == 10
    assert len(balanced) == len(plain) + 8 + 5
    assert len(SliceDataset([case], Approach.WV_NO_BRS, task="breast", lesion_visits=10)) == 12


def test_lesion_weights_favour_small_lesions_in_3d_with_26_connectivity():
    lesions = np.zeros((12, 30, 30), dtype=np.uint8)
    lesions[0:10, 0:10, 0:10] = 1  # 1000 voxels
    lesions[2:4, 20:22, 20:22] = 1  # 8 voxels ...
    lesions[4, 22, 22] = 1  # ... and one more touching them by a corner only: one lesion of 9
    lesions[11, 25:27, 0:30] = 1  # 60 voxels
    weights = lesion_weights(lesions, voxel_mm3=2.0, reference_mm3=1000.0)
    assert weights.dtype == np.float32 and np.all(weights[lesions == 0] == 0)
    assert np.all(weights[0:10, 0:10, 0:10] == 1.0)  # 2000 mm3: larger than the reference
    assert np.all(weights[11, 25:27] == pytest.approx(np.sqrt(1000.0 / 120.0)))
    assert weights[4, 22, 22] == weights[2, 20, 20] == pytest.approx(np.sqrt(1000.0 / 18.0))
    assert lesion_weights(lesions, voxel_mm3=0.1, reference_mm3=1000.0).max() == MAX_LESION_WEIGHT


def test_slice_dataset_gives_each_sample_the_weights_of_its_lesions(rng):
    case = prepare_case(**case_images(rng, shape_zyx=(12, 40, 40)), case_id="p1")
    case.lesions[:] = 0
    case.lesions[3:5, 10:13, 10:13] = 1
    case.lesions[6:11, 20:30, 20:30] = 1
    expected = lesion_weights(case.lesions, float(np.prod(case.grid.spacing)), 500.0)
    weighted = SliceDataset([case], Approach.WV_NO_BRS, lesion_weight_mm3=500.0)
    for item in (0, 3, 4, 8):
        sample = weighted[item]
        assert sample["lesion_weight"].shape == sample["label"].shape
        np.testing.assert_allclose(sample["lesion_weight"][0, :40, :40].numpy(), expected[sample["slice"]], rtol=1e-3)
    assert weighted[3]["lesion_weight"].max() > weighted[8]["lesion_weight"].max() > 0
    assert weighted[0]["lesion_weight"].abs().sum() == 0
    assert "lesion_weight" not in SliceDataset([case], Approach.WV_NO_BRS)[3]


def test_spatial_augmentation_moves_lesion_weights_with_the_label():
    label = torch.zeros(1, 48, 48)
    label[0, 10:20, 5:15] = 1
    sample = {"image": torch.randn(2, 48, 48), "label": label, "lesion_weight": label * 4.0}
    transform = training_transforms(2, strength=1.0)
    for seed in range(12):
        result = augment(dict(sample), transform, seed)
        assert torch.equal(result["lesion_weight"] > 0, result["label"] > 0)
        assert set(torch.unique(result["lesion_weight"]).tolist()) <= {0.0, 4.0}


# Patches --------------------------------------------------------------------------------------------------------------

def test_patch_dataset_oversamples_foreground(prepared):
    torch.manual_seed(0)

    def foreground_share(fraction: float) -> float:
        dataset = PatchDataset([prepared], patch_size=(4, 16, 16), samples_per_case=150,
                               foreground_fraction=fraction)
        return float(np.mean([dataset[index]["label"].sum().item() > 0 for index in range(len(dataset))]))

    oversampled, uniform = foreground_share(1 / 3), foreground_share(0.0)
    assert oversampled >= 0.3
    assert oversampled > uniform + 0.15
    sample = PatchDataset([prepared], patch_size=(4, 16, 16))[0]
    assert sample["image"].shape == (2, 4, 16, 16) and sample["label"].shape == (1, 4, 16, 16)


def test_patch_dataset_pads_small_volumes_and_masks_with_brs(prepared):
    dataset = PatchDataset([prepared], patch_size=(20, 32, 32), brs=True, samples_per_case=3)
    assert len(dataset) == 3
    sample = dataset[0]
    assert sample["image"].shape == (2, 20, 32, 32)
    z, y, x = sample["start"]
    outside = ~np.pad(prepared.breast.astype(bool), ((0, 4), (0, 0), (0, 0)))[z:z + 20, y:y + 32, x:x + 32]
    assert torch.all(sample["image"][:, torch.from_numpy(outside)] == 0)


def test_enhancing_classes_mark_the_most_enhancing_tissue_that_is_no_lesion(rng):
    subtraction = np.zeros((64, 64), np.float32)
    subtraction[8:56, 8:56] = rng.uniform(0.0, 1.0, (48, 48)) + 0.01  # breast tissue; zero outside the breast
    subtraction[20:24, 20:24] = 4.0  # a strongly enhancing vessel
    subtraction[40:46, 40:46] = 5.0  # the lesion, brighter still
    label = np.zeros_like(subtraction)
    label[40:46, 40:46] = 1
    classes = enhancing_classes(subtraction, label)
    assert np.all(classes[label > 0] == LESION)
    assert np.all(classes[20:24, 20:24] == ENHANCING)
    tissue = (subtraction > 0) & (label == 0)
    assert np.mean(classes[tissue] == ENHANCING) == pytest.approx(1 - ENHANCING_QUANTILE, abs=0.01)
    assert np.all(classes[subtraction == 0] == BACKGROUND)
    assert not np.any(enhancing_classes(np.zeros((8, 8)), np.zeros((8, 8))))


# Augmentation ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_keeps_image_and_label_aligned(dims):
    shape = (48, 48) if dims == 2 else (8, 40, 40)
    label = np.zeros((1, *shape), dtype=np.float32)
    label[(0, ..., slice(12, 30), slice(8, 20))] = 1.0
    transform = training_transforms(dims, strength=1.0)
    for seed in range(12):
        sample = {"image": torch.from_numpy(np.concatenate([label * 10.0, label])), "label": torch.from_numpy(label)}
        result = augment(sample, transform, seed)
        image, moved = result["image"][0].numpy(), result["label"][0].numpy() > 0.5
        assert result["image"].shape == (2, *shape) and isinstance(result["label"], torch.Tensor)
        estimated = image > (image.min() + image.max()) / 2
        dice = 2 * (estimated & moved).sum() / (estimated.sum() + moved.sum())
        assert dice > 0.85, f"seed {seed}: image and label drifted apart (Dice {dice:.2f})"
    assert np.array_equal(augment(dict(sample), training_transforms(dims, 0.0), 0)["label"], label)


@pytest.mark.parametrize("dims", [2, 3])
def test_mirroring_is_left_right_only(dims):
    shape = (2, 6, 8) if dims == 2 else (2, 4, 6, 8)
    image = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    flip = spatial_transforms(dims)[0]
    outcomes = set()
    for seed in range(20):
        flip.set_random_state(seed)
        result = flip({"image": image.clone(), "label": image[:1].clone()})["image"].as_tensor()
        assert torch.equal(result, image) or torch.equal(result, torch.flip(image, dims=[-1]))
        outcomes.add(torch.equal(result, image))
    assert outcomes == {True, False}


def test_augmentation_is_reproducible_from_its_seed():
    transform = training_transforms(2)
    sample = {"image": torch.rand(2, 32, 32), "label": (torch.rand(1, 32, 32) > 0.5).float()}
    first, second = augment(dict(sample), transform, 7), augment(dict(sample), transform, 7)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["label"], second["label"])


def test_contrast_uptake_scaling_keeps_pre_and_scales_every_enhancing_channel():
    inputs = ["pre", "post", "subtraction", "enhancement@-1", "enhancement", "pre@+1", "post@+1", "excess"]
    image = torch.rand(len(inputs), 16, 16) + 1.0
    image[4, 0, 0] = ENHANCEMENT_RANGE[1]
    transform = RandContrastUptaked(inputs, (0.5, 1.5))
    factors = []
    for seed in range(10):
        result = augment({"image": image.clone(), "label": torch.zeros(1, 16, 16)}, transform, seed)["image"]
        factor = float(result[2, 1, 1] / image[2, 1, 1])
        factors.append(factor)
        assert 0.5 <= factor <= 1.5
        assert torch.equal(result[[0, 5]], image[[0, 5]])
        for post, pre in ((1, 0), (6, 5)):
            assert torch.allclose(result[post] - result[pre], factor * (image[post] - image[pre]), atol=1e-5)
        assert torch.allclose(result[[2, 3, 7]], factor * image[[2, 3, 7]], atol=1e-5)
        assert float(result[4].max()) <= ENHANCEMENT_RANGE[1]
    assert min(factors) < 0.9 and max(factors) > 1.1
    again = augment({"image": image.clone(), "label": torch.zeros(1, 16, 16)}, transform, 9)["image"]
    assert float(again[2, 1, 1] / image[2, 1, 1]) == pytest.approx(factors[-1])


@pytest.mark.parametrize("inputs, factor_range, message", [
    (["pre", "post"], (0.0, 1.5), "0 < low <= high"),
    (["pre", "post@+1"], (0.5, 1.5), "needs the pre-contrast input"),
])
def test_contrast_uptake_scaling_refuses_bad_settings(inputs, factor_range, message):
    with pytest.raises(InputError, match=message):
        RandContrastUptaked(inputs, factor_range)


# nnU-Net and BreastDM -------------------------------------------------------------------------------------------------

def test_nnunet_export_and_import_round_trip(dataset_folder, tmp_path):
    records = load_dataset(dataset_folder)
    raw = tmp_path / "nnUNet_raw"
    target = export_nnunet_raw(records[:2], raw, 17, "Breast", channels=("pre", "post", "subtraction"),
                               splits=[{"train": ["case_000"], "val": ["case_001"]}], test_records=records[2:])
    assert target == raw / "Dataset017_Breast"
    description = json.loads((target / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "pre", "1": "post", "2": "subtraction"}
    assert description["labels"] == {"background": 0, "lesion": 1}
    assert description["numTraining"] == 2 and description["file_ending"] == ".nii.gz"
    assert sorted(path.name for path in (target / "imagesTr").iterdir()) == [
        f"case_00{case}_000{channel}.nii.gz" for case in (0, 1) for channel in (0, 1, 2)]
    assert (target / "labelsTr" / "case_001.nii.gz").is_file()
    assert (target / "imagesTs" / "case_002_0000.nii.gz").is_file()
    assert json.loads((target / "splits_final.json").read_text()) == [{"train": ["case_000"], "val": ["case_001"]}]
    subtraction = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / "case_000_0002.nii.gz")))
    pre, post = (sitk.GetArrayFromImage(sitk.ReadImage(str(getattr(records[0], role)))) for role in ("pre", "post"))
    assert np.allclose(subtraction, post - pre, atol=1e-3)

    imported = import_nnunet_raw(target, tmp_path / "imported")
    assert [record.case_id for record in imported] == ["case_000", "case_001"]
    assert load_dataset(tmp_path / "imported", require=("lesions",)) == imported
    for original, copy in zip(records, imported):
        for role in ("pre", "post", "lesions"):
            expected = sitk.ReadImage(str(getattr(original, role)))
            actual = sitk.ReadImage(str(getattr(copy, role)))
            assert np.allclose(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))
            assert actual.GetSpacing() == expected.GetSpacing()
    with pytest.raises(InputError, match="id 17 already exists"):
        export_nnunet_raw(records[:2], raw, 17, "Other")


def test_nnunet_export_refuses_cases_without_lesions_and_leaves_nothing(dataset_folder, tmp_path):
    records = load_dataset(dataset_folder)
    records[1] = CaseRecord(records[1].case_id, records[1].patient_id, records[1].pre, records[1].post)
    with pytest.raises(InputError, match="missing for case_001"):
        export_nnunet_raw(records, tmp_path / "raw", 5, "Breast")
    assert not (tmp_path / "raw" / "Dataset005_Breast").exists()


def write_breastdm_patient(folder: Path, rng, label_values=(0, 255)) -> None:
    folder.mkdir(parents=True)
    pre = np.zeros((40, 36, 8), dtype=np.float64)  # BreastDM: slices last, padded with blank slices
    pre[:, :, :6] = rng.uniform(50.0, 100.0, (40, 36, 6))
    label = np.zeros(pre.shape, dtype=np.uint8)
    label[10:20, 5:15, 2:4] = label_values[1]
    np.save(folder / "VIBRANT.npy", pre)
    np.save(folder / "VIBRANT+C2.npy", pre * 1.5)
    np.save(folder / "SUB2.npy", label)


def test_breastdm_import(tmp_path, rng):
    source = tmp_path / "BreastDM"
    for patient in ("P001", "P002"):
        write_breastdm_patient(source / "train" / patient, rng)
    records = import_breastdm(source, tmp_path / "dataset")
    assert [record.case_id for record in records] == ["train_P001", "train_P002"]
    assert load_dataset(tmp_path / "dataset", require=("lesions",)) == records
    validate_dataset(records, "lesion", min_patients=2)
    pre = sitk.ReadImage(str(records[0].pre))
    assert pre.GetSize() == (36, 40, 6)  # 2 blank slices dropped; slice k is array[..., k] with rows along y
    assert pre.GetSpacing() == (1.0, 1.0, 1.0)
    original = np.load(source / "train" / "P001" / "VIBRANT.npy")
    assert np.allclose(sitk.GetArrayFromImage(pre), np.moveaxis(original, 2, 0)[:6])
    lesions = sitk.GetArrayFromImage(sitk.ReadImage(str(records[0].lesions)))
    assert set(np.unique(lesions)) == {0, 1} and lesions.sum() == 10 * 10 * 2
    case = json.loads((tmp_path / "dataset" / "train_P001" / "case.json").read_text())
    assert case["kept_slices"] == [0, 1, 2, 3, 4, 5]


def test_breastdm_import_refuses_a_non_mask_label_and_writes_nothing(tmp_path, rng):
    write_breastdm_patient(tmp_path / "src" / "P1", rng)
    write_breastdm_patient(tmp_path / "src" / "P2", rng, label_values=(0, 37))
    with pytest.raises(InputError, match="SUB2.npy is not a lesion mask"):
        import_breastdm(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
