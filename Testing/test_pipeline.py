"""The segmentation pipeline and `breastseg segment`, with real networks whose outputs are known.

The networks are the registered architectures with every weight zero and the last bias set, so each predicts a
constant probability: the tests then check the pipeline's mechanics (grids, crop and paste, masks, outputs,
errors) exactly, independently of any training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.data.crops import CropBox
from BreastSegmentationLib.data.preprocessing import Grid
from BreastSegmentationLib.inference.pipeline import (
    autocast_type,
    lesion_labels,
    load_models,
    rounded_probability,
    rounded_probability_on,
    segment_images,
)
from BreastSegmentationLib.inference.postprocess import LesionCleaning, clean_lesion_mask
from BreastSegmentationLib.inference.runtime import mixed_precision_dtype, precision_name
from BreastSegmentationLib.inference.study import OUTPUT_FILES, segment_study, study_from_files
from BreastSegmentationLib.io.images import resample_like
from BreastSegmentationLib.models.cards import ModelCard, save_model
from BreastSegmentationLib.models.registry import build_model
from BreastSegmentationLib import resources
from BreastSegmentationLib.resources import sample_dir


def constant_model(architecture: str, inputs: int, logit: float) -> torch.nn.Module:
    model = build_model(architecture, in_channels=inputs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        last_conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last_conv.bias.fill_(logit)
    return model


def write_models(folder: Path, breast_logit: float, lesion_logit: float,
                 lesion_inputs: tuple[str, ...] = ("pre", "post", "subtraction"), min_lesion_mm3: float = 10.0,
                 min_lesion_peak: float | None = None) -> Path:
    breast_card = ModelCard(name="brs", task="breast", architecture="unet_small", inputs=["pre", "post"],
                            preprocessing={"spacing_mm": [2.0, 2.0]})
    lesion_card = ModelCard(name="bls", task="lesion", architecture="unetpp_small", inputs=list(lesion_inputs),
                            min_lesion_mm3=min_lesion_mm3, min_lesion_peak=min_lesion_peak,
                            preprocessing={"spacing_mm": [1.0, 1.0], "subtraction": True, "enhancement": True,
                                           "crop": {"kind": "ov", "safe_distance_mm": 16.0, "multiple": 32}})
    save_model(constant_model("unet_small", 2, breast_logit), breast_card, folder)
    save_model(constant_model("unetpp_small", len(lesion_inputs), lesion_logit), lesion_card, folder)
    return folder


def study_images(rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    pre = rng.normal(300.0, 30.0, size=(10, 40, 48)).astype(np.float32)
    pre[:, :4] = rng.normal(5.0, 2.0, size=(10, 4, 48))  # air in front of the body
    post = pre * 1.1
    images = []
    for array in (pre, post):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.9, 0.9, 2.0))
        image.SetOrigin((-20.0, -30.0, 5.0))
        images.append(image)
    return images[0], images[1]


@pytest.fixture
def study_files(tmp_path, rng) -> tuple[Path, Path]:
    pre, post = study_images(rng)
    paths = tmp_path / "pre.nii.gz", tmp_path / "post.nrrd"
    sitk.WriteImage(pre, str(paths[0]))
    sitk.WriteImage(post, str(paths[1]))
    return paths


def test_segmentation_lies_on_the_pre_grid_and_lesions_stay_in_the_breast(tmp_path, rng):
    models = load_models(write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=5.0), "cpu")
    pre, post = study_images(rng)
    result = segment_images(pre, post, models)
    for image in (result.breast, result.lesions, result.probability):
        assert image.GetSize() == pre.GetSize() and image.GetOrigin() == pre.GetOrigin()
    breast = sitk.GetArrayFromImage(result.breast)
    lesions = sitk.GetArrayFromImage(result.lesions)
    assert breast.all()  # the breast model says "breast" everywhere
    assert set(np.unique(lesions)) == {1}  # one lesion component: the whole crop around the breast
    assert not lesions[breast == 0].any()
    probability = sitk.GetArrayFromImage(result.probability)
    assert probability.max() == pytest.approx(1 / (1 + np.exp(-5.0)), abs=1e-3)
    steps = probability / 1e-3  # probabilities are kept to 0.001, which lets the file compress
    assert np.allclose(steps, np.round(steps), atol=1e-3) and probability.dtype == np.float32
    assert set(result.seconds) >= {"breast", "lesions"}


def test_probability_on_the_study_grid_equals_resampling_it_whole_then_rounding(rng, oblique_image):
    """Only the box of the voxels that may round above 0 is interpolated: the result must not differ anywhere."""
    crop = np.full((7, 12, 14), 2e-4, dtype=np.float32)  # the network's near-zero background: it rounds to 0
    crop[2:4, 3:6, 4:6] = rng.uniform(0.2, 1.0, size=(2, 3, 2))
    crop[5, 9, 11] = 6e-4  # a lone value that rounds to 0.001
    probability = sitk.GetImageFromArray(crop)
    probability.SetSpacing((0.9, 0.6, 1.5))
    probability.SetOrigin(oblique_image.TransformIndexToPhysicalPoint((1, 1, 1)))
    probability.SetDirection(oblique_image.GetDirection())
    expected = sitk.GetArrayFromImage(rounded_probability(resample_like(probability, oblique_image)))
    result = rounded_probability_on(probability, oblique_image)
    assert result.GetSize() == oblique_image.GetSize() and result.GetOrigin() == oblique_image.GetOrigin()
    assert expected.max() > 0.2 and np.array_equal(sitk.GetArrayFromImage(result), expected)
    background = rounded_probability_on(sitk.Cast(probability * 0.0, sitk.sitkFloat32), oblique_image)
    assert background.GetSpacing() == oblique_image.GetSpacing() and not sitk.GetArrayFromImage(background).any()


@pytest.mark.parametrize("inputs", [("pre", "post", "subtraction@-1", "subtraction", "subtraction@+1"),
                                    ("pre", "subtraction", "enhancement", "excess@-1", "excess", "excess@+1")])
def test_lesion_model_with_neighbouring_slice_inputs_runs_on_every_breast_slice(tmp_path, rng, inputs):
    models = load_models(write_models(tmp_path / "models", 5.0, 5.0, lesion_inputs=inputs), "cpu")
    result = segment_images(*study_images(rng), models)
    assert result.network_inputs["lesion"][:2] == (len(inputs), 10)  # all ten slices hold breast
    assert sitk.GetArrayFromImage(result.lesions).all()


def test_lesion_threshold_above_the_probability_finds_no_lesion(tmp_path, rng):
    from BreastSegmentationLib.inference.pipeline import SegmentationOptions

    models = load_models(write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=-1.0), "cpu")
    pre, post = study_images(rng)
    result = segment_images(pre, post, models, SegmentationOptions(threshold=0.5))
    assert sitk.GetArrayFromImage(result.lesions).sum() == 0
    assert result.lesions.GetSize() == pre.GetSize() and result.lesions.GetOrigin() == pre.GetOrigin()
    assert result.lesions.GetPixelID() == sitk.sitkUInt16  # a label map like any other


def test_lesions_cleaned_on_the_block_above_threshold_equal_those_cleaned_on_the_whole_box(rng, oblique_image):
    """The labels are found on the block of the voxels above the threshold only: put back on the study's grid,
    they must equal those of the whole box, label for label (order by size, small and outside-breast ones dropped)."""
    grid = Grid.of(oblique_image)
    box = CropBox((1, 7), (1, 10), (2, 12))
    probability = rng.uniform(0.0, 0.3, size=box.shape).astype(np.float32)
    probability[0:3, 1:4, 1:5] = 0.9  # the larger lesion
    probability[4:6, 6:8, 7:9] = 0.8  # a smaller one
    probability[5, 0, 9] = 0.7  # one voxel (1.12 mm3): under the minimum volume
    breast = np.ones(oblique_image.GetSize()[::-1], dtype=np.uint8)
    cleaning = LesionCleaning(min_volume_mm3=2.0, min_peak_probability=0.75)
    labels = lesion_labels(grid, box, probability, breast, 0.5, cleaning)
    in_box = grid.sub_grid(box)
    whole = clean_lesion_mask(in_box.image((probability > 0.5).astype(np.uint8)),
                              in_box.image(np.ascontiguousarray(box.apply(breast))), cleaning,
                              probability=in_box.image(probability))
    expected = sitk.GetArrayFromImage(resample_like(whole, oblique_image, is_mask=True))
    assert set(np.unique(expected)) == {0, 1, 2}
    assert np.prod(labels.GetSize()) < np.prod(whole.GetSize())
    assert np.array_equal(sitk.GetArrayFromImage(resample_like(labels, oblique_image, is_mask=True)), expected)
    assert lesion_labels(grid, box, probability, breast, 0.95, cleaning) is None


def test_minimum_lesion_volume_comes_from_the_card_unless_the_options_give_one(tmp_path, rng):
    from BreastSegmentationLib.inference.pipeline import SegmentationOptions

    # The constant lesion model marks the whole crop: one lesion of 10 x 40 x 48 voxels of 1.62 mm3 (31,104 mm3).
    models = load_models(write_models(tmp_path / "models", 5.0, 5.0, min_lesion_mm3=40_000.0), "cpu")
    images = study_images(rng)
    by_card = segment_images(*images, models)
    assert by_card.min_lesion_mm3 == 40_000.0 and not sitk.GetArrayFromImage(by_card.lesions).any()
    by_option = segment_images(*images, models, SegmentationOptions(min_lesion_mm3=30_000.0))
    assert by_option.min_lesion_mm3 == 30_000.0 and sitk.GetArrayFromImage(by_option.lesions).all()


def test_minimum_lesion_peak_comes_from_the_card_unless_the_options_give_one(tmp_path, rng):
    from BreastSegmentationLib.inference.pipeline import SegmentationOptions

    # The constant lesion model says 0.62 everywhere: above the threshold 0.5, below the card's peak level 0.7.
    models = load_models(write_models(tmp_path / "models", 5.0, 0.5, min_lesion_peak=0.7), "cpu")
    images = study_images(rng)
    by_card = segment_images(*images, models, SegmentationOptions(threshold=0.5))
    assert by_card.min_lesion_peak == 0.7 and not sitk.GetArrayFromImage(by_card.lesions).any()
    by_option = segment_images(*images, models, SegmentationOptions(threshold=0.5, min_lesion_peak=0.6))
    assert by_option.min_lesion_peak == 0.6 and sitk.GetArrayFromImage(by_option.lesions).all()


def test_the_slicer_default_threshold_is_the_bundled_lesion_cards(tmp_path, monkeypatch):
    """The Slicer module's slider starts at the threshold the CLI uses by default, read without torch."""
    assert resources.bundled_lesion_threshold() == load_models(None, "cpu").lesion.card.threshold
    breast_only = tmp_path / "models"
    breast_only.mkdir()
    for card in resources.bundled_models_dir().glob("breast_*.json"):
        (breast_only / card.name).write_text(card.read_text())
    monkeypatch.setattr(resources, "bundled_models_dir", lambda: breast_only)
    with pytest.raises(InputError, match="no lesion model card"):
        resources.bundled_lesion_threshold()


def test_a_sagittally_stored_study_gives_the_same_segmentation_as_the_axial_one():
    """Many protocols store DCE-MRI sagittally; the bundled models must see the same axial slices either way."""
    sample = sample_dir()
    axial = [sitk.ReadImage(str(sample / name)) for name in ("pre.nii.gz", "post.nii.gz")]
    sagittal = [sitk.DICOMOrient(image, "PSL") for image in axial]  # slices along left-right, same voxels
    models = load_models(None, "cpu")
    from_axial, from_sagittal = segment_images(*axial, models), segment_images(*sagittal, models)
    assert from_sagittal.lesions.GetSize() == sagittal[0].GetSize()
    for name in ("breast", "lesions"):
        expected = sitk.GetArrayFromImage(getattr(from_axial, name))
        back_on_axial = sitk.Resample(getattr(from_sagittal, name), axial[0], sitk.Transform(), sitk.sitkNearestNeighbor)
        assert expected.any() and np.array_equal(sitk.GetArrayFromImage(back_on_axial), expected), name


def test_mixed_precision_where_it_does_not_pay_runs_float32_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # a CPU without bf16 instructions
    assert autocast_type(torch.device("cpu"), mixed_precision=False) is None and not caplog.records
    assert autocast_type(torch.device("cpu"), mixed_precision=True) is None
    assert "running in float32" in caplog.text
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert autocast_type(torch.device("cpu"), mixed_precision=True) is torch.bfloat16


def test_no_breast_found_is_a_clear_error_and_writes_nothing(tmp_path, rng):
    models = load_models(write_models(tmp_path / "models", breast_logit=-5.0, lesion_logit=5.0), "cpu")
    pre, post = study_images(rng)
    with pytest.raises(InputError, match="no breast tissue found"):
        segment_study(study_from_files_images(tmp_path, pre, post), tmp_path / "out", models)
    assert not (tmp_path / "out").exists()


def study_from_files_images(tmp_path: Path, pre: sitk.Image, post: sitk.Image):
    sitk.WriteImage(pre, str(tmp_path / "p.nii.gz"))
    sitk.WriteImage(post, str(tmp_path / "q.nii.gz"))
    return study_from_files(tmp_path / "p.nii.gz", tmp_path / "q.nii.gz")


def test_segment_command_writes_every_output_and_metrics_with_a_reference(tmp_path, study_files):
    models = write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=5.0)
    reference = sitk.Image(sitk.ReadImage(str(study_files[0])).GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(sitk.ReadImage(str(study_files[0])))
    reference[10:20, 10:20, 3:6] = 1
    sitk.WriteImage(reference, str(tmp_path / "ref.nii.gz"))
    out = tmp_path / "out"
    code = main(["--progress", "none", "segment", "--pre", str(study_files[0]), "--post", str(study_files[1]),
                 "--out", str(out), "--models", str(models), "--device", "cpu",
                 "--reference", str(tmp_path / "ref.nii.gz")])
    assert code == 0
    for name in OUTPUT_FILES + ("metrics.json", "lesion_matches.csv"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lesion_count"] == 1
    assert [card["name"] for card in summary["models"]] == ["brs", "bls"]
    assert summary["network_precision"] == "float32"
    assert all(len(card["sha256"]) == 64 for card in summary["models"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recall"] == pytest.approx(1.0)
    assert metrics["lesions"]["tp"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging folder left


@pytest.mark.parametrize("problem", ["missing", "2d", "no_overlap", "swapped"])
def test_segment_command_rejects_bad_input_with_exit_2_and_no_output(tmp_path, study_files, problem, capsys):
    models = write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=5.0)
    pre, post = study_files
    if problem == "swapped":
        pre, post = post, pre
    elif problem == "missing":
        post = tmp_path / "absent.nii.gz"
    elif problem == "2d":
        post = tmp_path / "flat.nii.gz"
        sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(post))
    else:
        far = sitk.ReadImage(str(study_files[1]))
        far.SetOrigin((500.0, 0.0, 0.0))
        post = tmp_path / "far.nii.gz"
        sitk.WriteImage(far, str(post))
    out = tmp_path / "out"
    code = main(["--progress", "none", "segment", "--pre", str(pre), "--post", str(post),
                 "--out", str(out), "--models", str(models), "--device", "cpu"])
    assert code == 2
    assert not out.exists()
    error = capsys.readouterr().err
    assert {"missing": "not found", "2d": "2-D", "no_overlap": "do not overlap",
            "swapped": "are pre and post swapped"}[problem] in error
    assert "case " not in error  # a study being segmented is not named as a dataset's case


def test_tampered_weights_are_refused(tmp_path, study_files):
    models = write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=5.0)
    weights = models / "bls.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code = main(["--progress", "none", "segment", "--pre", str(study_files[0]), "--post", str(study_files[1]),
                 "--out", str(tmp_path / "out"), "--models", str(models), "--device", "cpu"])
    assert code == 2 and not (tmp_path / "out").exists()


def test_many_studies_one_failing_is_reported_and_the_others_go_on(tmp_path, study_files):
    models = write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=5.0)
    studies = tmp_path / "studies"
    (studies / "good").mkdir(parents=True)
    (studies / "flat").mkdir()
    for path, name in zip(study_files, ("pre.nii.gz", "post.nrrd")):
        (studies / "good" / name).write_bytes(path.read_bytes())
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(studies / "flat" / "pre.nii.gz"))
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(studies / "flat" / "post.nii.gz"))
    out = tmp_path / "out"
    code = main(["--progress", "none", "segment", "--input-dir", str(studies), "--out", str(out),
                 "--models", str(models), "--device", "cpu", "--mixed-precision"])
    assert code == 1
    summary = json.loads((out / "batch_summary.json").read_text())
    status = {row["study"]: (row["status"], row["message"]) for row in summary["studies"]}
    assert status["good"][0] == "ok" and status["flat"][0] == "bad input" and "2-D" in status["flat"][1]
    assert all((out / "good" / name).is_file() for name in OUTPUT_FILES)
    assert not (out / "flat").exists()
    mixed = precision_name(mixed_precision_dtype(torch.device("cpu"), enabled=True))
    summary = json.loads((out / "good" / "summary.json").read_text())
    assert summary["network_precision"] == mixed  # the batch's options reach each study


def test_many_studies_are_scored_against_references_named_after_them(tmp_path, study_files):
    models = write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=5.0)
    studies, references = tmp_path / "studies", tmp_path / "references"
    for study in ("Case_A", "case_b"):
        (studies / study).mkdir(parents=True)
        for path, name in zip(study_files, (f"{study}_0000.nii.gz", f"{study}_0001.nrrd")):
            (studies / study / name).write_bytes(path.read_bytes())
    reference = sitk.Image(sitk.ReadImage(str(study_files[0])).GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(sitk.ReadImage(str(study_files[0])))
    reference[10:20, 10:20, 2:6] = 1  # one reference lesion of 10 x 10 x 4 voxels
    references.mkdir()
    sitk.WriteImage(reference, str(references / "case_a.nii.gz"))  # named after its study in another case
    out = tmp_path / "out"
    code = main(["--progress", "none", "segment", "--input-dir", str(studies), "--reference-dir", str(references),
                 "--out", str(out), "--models", str(models), "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    rows = {row["study"]: row for row in summary["studies"]}
    metrics = json.loads((out / "Case_A" / "metrics.json").read_text())
    assert rows["Case_A"]["dice"] == round(metrics["dice"], 4) and 0.0 < metrics["dice"] < 1.0
    assert (rows["Case_A"]["reference_lesions_found"], rows["Case_A"]["reference_lesions_missed"],
            rows["Case_A"]["false_positive_lesions"]) == tuple(metrics["lesions"][k] for k in ("tp", "fn", "fp"))
    assert rows["case_b"]["dice"] is None and not (out / "case_b" / "metrics.json").exists()
    assert summary["scored"]["studies"] == 1 and summary["scored"]["mean_dice"] == rows["Case_A"]["dice"]
    with pytest.raises(SystemExit):
        main(["--progress", "none", "segment", "--pre", str(study_files[0]), "--post", str(study_files[1]),
              "--reference-dir", str(references), "--out", str(tmp_path / "one")])


def test_an_ensemble_lesion_card_runs_the_mean_of_its_networks(tmp_path, rng):
    """Two constant lesion networks (logits 5 and -5: 0.993 and 0.007) as one ensemble card beside the breast
    model: the lesion probability is their mean, 0.5, which the first card's threshold 0.4 keeps."""
    members = [write_models(tmp_path / name, 5.0, logit) / "bls.json" for name, logit in (("a", 5.0), ("b", -5.0))]
    for folder in ("a", "b"):  # distinct weights file names, as two training runs of distinct names give
        card = ModelCard.from_json(tmp_path / folder / "bls.json")
        (tmp_path / folder / "bls.safetensors").rename(tmp_path / folder / f"bls_{folder}.safetensors")
        card.weights = f"bls_{folder}.safetensors"
        card.threshold = 0.4
        card.to_json(tmp_path / folder / "bls.json")
    folder = write_models(tmp_path / "models", breast_logit=5.0, lesion_logit=5.0)
    for name in ("bls.json", "bls.safetensors"):
        (folder / name).unlink()
    assert main(["--progress", "none", "ensemble", *map(str, members), "--name", "bls_ab", "--out", str(folder)]) == 0
    models = load_models(folder, "cpu")
    assert len(models.lesion.networks) == 2 and len(models.breast.networks) == 1
    result = segment_images(*study_images(rng), models)
    probability = sitk.GetArrayFromImage(result.probability)
    assert np.allclose(probability[probability > 0], 0.5, atol=1e-3)
    assert sitk.GetArrayFromImage(result.lesions).all()
    recorded = [card for card in models.cards() if card["task"] == "lesion"][0]
    assert json.loads(json.dumps(recorded))["weights"] == ["bls_a.safetensors", "bls_b.safetensors"]


@pytest.mark.parametrize("precision", [[], ["--mixed-precision"]], ids=["float32", "mixed"])
def test_the_demo_finds_the_sample_lesion_with_the_bundled_models(tmp_path, capsys, precision):
    """The README's first command: every output, the bundled models find the sample's one lesion and nothing else (a
    broken or swapped weights file would fail here), and the summary records every weights file with its SHA-256;
    the same in mixed precision (bfloat16 on this project's CPUs)."""
    assert main(["--progress", "none", "demo", "--out", str(tmp_path / "demo"), "--device", "cpu", *precision]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(OUTPUT_FILES + ("metrics.json", "lesion_matches.csv")) == sorted(
        p.name for p in (tmp_path / "demo").iterdir())
    assert (printed["lesions_detected"], printed["false_positive_lesions"], printed["lesion_count"]) == (1, 0, 1)
    assert printed["dice"] > 0.7
    mixed = mixed_precision_dtype(torch.device("cpu"), enabled=bool(precision))
    assert printed["network_precision"] == precision_name(mixed)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    recorded = {card["task"]: card for card in summary["models"]}
    bundled = ModelCard.from_json(Path(recorded["lesion"]["path"]))
    assert (recorded["lesion"]["weights"], recorded["lesion"]["sha256"]) == (bundled.weights, bundled.sha256)
