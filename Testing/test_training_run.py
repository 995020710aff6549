"""A whole training run from a configuration: checks first, folds by patient, models and tables written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.data.augmentation import RandContrastUptaked
from BreastSegmentationLib.data.datasets import load_dataset, write_manifest
from BreastSegmentationLib.data.phantom import write_cases
from BreastSegmentationLib.data.preprocessing import PreprocessConfig, prepare_checked
from BreastSegmentationLib.data.slices import SliceDataset
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.inference.pipeline import lesion_input, load_models
from BreastSegmentationLib.models.cards import load_model, load_networks
from BreastSegmentationLib.models.registry import ARCHITECTURES
from BreastSegmentationLib.resources import bundled_models_dir
from BreastSegmentationLib.training.config import config_from_dict, load_config
from BreastSegmentationLib.training.run import (
    initial_weights,
    make_slice_dataset,
    slice_training_transform,
    training_view,
)


@pytest.fixture(scope="module")
def phantom_lesion_manifest(tmp_path_factory) -> Path:
    """Small phantom cases, those with lesions listed in a manifest (a lesion dataset needs lesions)."""
    root = tmp_path_factory.mktemp("phantom")
    write_cases(root / "cases", 9, seed=5, shape=(64, 64, 16))
    records = [r for r in load_dataset(root / "cases") if json.loads((Path(r.pre).parent / "case.json").read_text())
               ["lesions"]]
    assert len(records) >= 5, "the phantom should give most cases a lesion"
    return write_manifest(records, root / "lesions.csv")


def write_config(folder: Path, dataset: Path, **changes) -> Path:
    config = {
        "name": "tiny", "task": "lesion", "dataset": str(dataset), "output_dir": str(folder / "runs"),
        "architecture": "unet_small", "inputs": ["pre", "post", "subtraction"], "approach": "ov", "slices": "breast",
        "preprocessing": {"spacing_mm": [2.5, 2.5], "subtraction": True},
        "patches": {"size": [32, 32], "foreground_ratio": 0.5}, "augmentation": 0.5,
        "folds": 2, "test_patients": 1, "run_folds": [0],
        "optimisation": {"epochs": 2, "batch_size": 8}, "device": "cpu",
    }
    config.update(changes)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_training_writes_a_loadable_model_card_logs_and_results(tmp_path, phantom_lesion_manifest, capsys):
    config = write_config(tmp_path, phantom_lesion_manifest)
    assert main(["--progress", "none", "train", str(config)]) == 0
    run = tmp_path / "runs" / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert [row["fold"] for row in results["folds"]] == [0]
    assert (run / "fold_0" / "log.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert (run / "fold_0" / "loss.png").stat().st_size > 0
    model, card = load_model(run / "model" / "tiny.json")
    assert card.task == "lesion" and card.inputs == ["pre", "post", "subtraction"]
    assert card.preprocessing["crop"]["kind"] == "ov"
    split = json.loads((run / "split.json").read_text())
    assert not set(split["test_patients"]) & set(card.training["train_patients"] + card.training["val_patients"])
    assert "dice" in card.metrics["test"] and card.metrics["cross_validation"][0]["fold"] == 0
    assert card.training["energy"]["co2_kg"] >= 0


def test_resumed_training_continues_from_the_checkpoint(tmp_path, phantom_lesion_manifest):
    config = write_config(tmp_path, phantom_lesion_manifest, optimisation={"epochs": 1, "batch_size": 8})
    assert main(["--progress", "none", "train", str(config)]) == 0
    assert main(["--progress", "none", "train", str(config), "--epochs", "2"]) == 0
    log = (tmp_path / "runs" / "tiny" / "fold_0" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["1", "2"]


def test_breast_slices_option_takes_every_slice_with_breast(phantom_lesion_manifest):
    cases = prepare_checked(load_dataset(phantom_lesion_manifest)[:2], "lesion", PreprocessConfig(spacing_mm=(2.5, 2.5)))
    lesion_slices = SliceDataset(cases, approach="ov", task="lesion")
    breast_slices = SliceDataset(cases, approach="ov", task="lesion", breast_slices=True)
    assert len(breast_slices) > len(lesion_slices)
    assert len(breast_slices) == sum(int(c.breast.any(axis=(1, 2)).sum()) for c in cases)


@pytest.mark.parametrize("change, message", [
    ({"architecture": "nonet"}, "unknown architecture"),
    ({"approach": "sideways"}, "approach must be one of"),
    ({"learning_rate": 0.1}, "unknown key"),
    ({"folds": 20}, "at least 21"),
    ({"inputs": ["pre", "post", "subtraction"], "preprocessing": {}}, "subtraction"),
    ({"patches": {"size": [32, 32], "foreground_ratio": 0.8, "enhancing_ratio": 0.3}}, "sum <= 1"),
    ({"patches": {"size": [32, 32], "enhancing_ratio": 0.3}, "inputs": ["pre", "post"]}, "'subtraction' input"),
    ({"contrast_uptake_range": [1.5, 0.5]}, "0 < low <= high"),
    ({"lesion_visits": 0}, "lesion_visits must be at least 1"),
    ({"lesion_weight_mm3": -5}, "lesion_weight_mm3 must be a positive volume"),
    ({"lesion_weight_mm3": 500, "task": "breast", "approach": "wv"}, "is for lesion models"),
    ({"contrast_uptake_range": [0.5, 1.5], "inputs": ["post"]}, "needs the pre-contrast input"),
    ({"initial_member": -1}, "initial_member must be 0 or more"),
])
def test_bad_configurations_fail_before_training_with_exit_2(tmp_path, phantom_lesion_manifest, change, message,
                                                            capsys):
    config = write_config(tmp_path, phantom_lesion_manifest, **change)
    assert main(["--progress", "none", "train", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "fold_0").exists()


BUNDLED_LESION_CARD = bundled_models_dir() / "lesion_unet_small.json"


@pytest.mark.parametrize("member", [None, 1])
def test_initial_model_starts_training_from_its_weights(tmp_path, phantom_lesion_manifest, member):
    """Fine-tuning the bundled lesion model, an ensemble, starts from its first network, or from the network that
    ``initial_member`` names: with a learning rate of 0 that network's weights come out unchanged."""
    networks, card = load_networks(BUNDLED_LESION_CARD)
    start = networks[member or 0]
    chosen = {} if member is None else {"initial_member": member}
    config = write_config(tmp_path, phantom_lesion_manifest, inputs=card.inputs, initial_model=str(BUNDLED_LESION_CARD),
                          preprocessing={"spacing_mm": [2.5, 2.5], "subtraction": True, "enhancement": True},
                          optimisation={"epochs": 1, "batch_size": 8, "learning_rate": 0.0}, **chosen)
    assert main(["--progress", "none", "train", str(config)]) == 0
    tuned, _ = load_model(tmp_path / "runs" / "tiny" / "model" / "tiny.json")
    for (name, before), (_, after) in zip(start.named_parameters(), tuned.named_parameters()):
        assert torch.equal(before, after), name
    assert load_config(config).initial_model == str(BUNDLED_LESION_CARD.resolve())


def test_initial_member_beyond_the_ensemble_fails_before_training(tmp_path, phantom_lesion_manifest, capsys):
    card = load_networks(BUNDLED_LESION_CARD)[1]
    config = write_config(tmp_path, phantom_lesion_manifest, inputs=card.inputs, initial_model=str(BUNDLED_LESION_CARD),
                          preprocessing={"spacing_mm": [2.5, 2.5], "subtraction": True, "enhancement": True},
                          initial_member=len(card.members))
    assert main(["--progress", "none", "train", str(config)]) == 2
    assert f"initial_member {len(card.members)} names no network of initial_model" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_initial_model_of_another_network_fails_before_training(tmp_path, phantom_lesion_manifest, capsys):
    config = write_config(tmp_path, phantom_lesion_manifest, initial_model=str(BUNDLED_LESION_CARD))
    assert main(["--progress", "none", "train", str(config)]) == 2
    assert "initial_model differs from the configuration in inputs" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_initial_model_with_some_of_the_inputs_starts_a_wider_network(tmp_path):
    """A configuration that adds inputs to the bundled lesion model's starts from its weights, zeros for the new."""
    networks, card = load_networks(BUNDLED_LESION_CARD)
    inputs = [*card.inputs, "enhancement@-2", "enhancement@+2"]
    config = config_from_dict({"name": "wider", "task": "lesion", "dataset": "d.csv", "inputs": inputs,
                               "architecture": card.architecture, "initial_model": str(BUNDLED_LESION_CARD),
                               "preprocessing": {"subtraction": True, "enhancement": True}}, tmp_path)
    start, trained = initial_weights(config), networks[0].state_dict()
    widened = [key for key in trained if start[key].shape != trained[key].shape]
    assert widened and all(start[key].shape[1] == len(inputs) for key in widened)
    for key in widened:
        assert torch.equal(start[key][:, :len(card.inputs)], trained[key])
        assert not start[key][:, len(card.inputs):].any()
    assert all(torch.equal(start[key], trained[key]) for key in trained if key not in widened)


def test_trained_models_run_through_the_pipeline(tmp_path, phantom_lesion_manifest):
    """A breast and a lesion model from `train` form a model folder that `segment` loads."""
    (tmp_path / "l").mkdir()
    (tmp_path / "b").mkdir()
    lesion = write_config(tmp_path / "l", phantom_lesion_manifest)
    breast = write_config(tmp_path / "b", phantom_lesion_manifest, name="tinybrs", task="breast", approach="wv",
                          slices="approach", inputs=["pre", "post"], loss="dice", patches={"size": None},
                          preprocessing={"spacing_mm": [3.0, 3.0]})
    assert main(["--progress", "none", "train", str(lesion), "--epochs", "1"]) == 0
    assert main(["--progress", "none", "train", str(breast), "--epochs", "1"]) == 0
    models = tmp_path / "models"
    models.mkdir()
    for run in (tmp_path / "l" / "runs" / "tiny", tmp_path / "b" / "runs" / "tinybrs"):
        for file in (run / "model").iterdir():
            (models / file.name).write_bytes(file.read_bytes())
    loaded = load_models(models, "cpu")
    assert loaded.breast.card.name == "tinybrs" and loaded.lesion.card.name == "tiny"


def test_data_parallel_training_with_torchrun_on_two_cpu_processes(tmp_path, phantom_lesion_manifest):
    """torchrun starts two processes (gloo on the CPU); they train one model and only rank 0 writes it."""
    config = write_config(tmp_path, phantom_lesion_manifest, optimisation={"epochs": 1, "batch_size": 4})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "BreastSegmentationLib.cli", "--progress", "none", "train", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "runs" / "tiny" / "fold_0" / "log.csv").read_text().splitlines()
    assert len(log) == 2  # one epoch, logged once
    _, card = load_model(tmp_path / "runs" / "tiny" / "model" / "tiny.json")
    assert card.training["epochs_run"] == 1


def test_lesion_slices_can_be_oversampled_in_training(phantom_lesion_manifest):
    cases = prepare_checked(load_dataset(phantom_lesion_manifest)[:2], "lesion", PreprocessConfig(spacing_mm=(2.5, 2.5)))
    plain = SliceDataset(cases, approach="ov", task="lesion", breast_slices=True)
    repeated = SliceDataset(cases, approach="ov", task="lesion", breast_slices=True, lesion_slice_repeats=3)
    lesion_slices = sum(int(c.lesions[np.flatnonzero(c.breast.any(axis=(1, 2)))].any(axis=(1, 2)).sum()) for c in cases)
    assert lesion_slices > 0
    assert len(repeated) == len(plain) + 2 * lesion_slices


@pytest.mark.parametrize("patches", [{"size": [32, 32], "foreground_ratio": 0.5},
                                     {"size": [32, 32], "foreground_ratio": 0.5, "enhancing_ratio": 0.25}])
def test_lesion_weights_follow_the_patches_into_training(tmp_path, phantom_lesion_manifest, patches):
    config_path = write_config(tmp_path, phantom_lesion_manifest, lesion_weight_mm3=1e5, patches=patches,
                               optimisation={"epochs": 1, "batch_size": 8})
    config = load_config(config_path)
    cases = prepare_checked(load_dataset(phantom_lesion_manifest)[:2], "lesion", config.preprocess)
    dataset = make_slice_dataset(config, [training_view(config, case) for case in cases], training=True)
    torch.manual_seed(0)
    samples = [dataset[item] for item in range(len(dataset))]
    assert all(sample["lesion_weight"].shape == sample["label"].shape == (1, 32, 32) for sample in samples)
    assert all(torch.equal(sample["lesion_weight"] > 0, sample["label"] > 0) for sample in samples)
    assert any(sample["lesion_weight"].max() > 1 for sample in samples)
    assert "lesion_weight" not in make_slice_dataset(config, cases[:1], training=False)[0]
    assert main(["--progress", "none", "train", str(config_path)]) == 0


def test_unknown_optimiser_is_a_configuration_error(tmp_path, phantom_lesion_manifest, capsys):
    config = write_config(tmp_path, phantom_lesion_manifest, optimisation={"optimiser": "lbfgs"})
    assert main(["--progress", "none", "train", str(config)]) == 2
    assert "optimiser must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("inputs", [["pre", "subtraction@-1", "subtraction", "subtraction@+1"],
                                    ["pre", "enhancement@-1", "enhancement", "enhancement@+1", "subtraction"],
                                    ["pre", "subtraction", "enhancement", "excess@-1", "excess", "excess@+1"]])
def test_lesion_inputs_in_training_equal_those_at_inference(phantom_lesion_manifest, tmp_path, inputs):
    """The 2.5-D inputs a lesion model learns from (trimmed, float16 training cases) are those the pipeline gives
    it: per slice and channel the same values over the breast, neighbouring slices included at the breast's ends."""
    config = load_config(write_config(tmp_path, phantom_lesion_manifest, inputs=inputs, preprocessing={
        "spacing_mm": [2.5, 2.5], "subtraction": True, "enhancement": True}))
    record = load_dataset(phantom_lesion_manifest)[0]
    [full] = prepare_checked([record], "lesion", config.preprocess)
    dataset = make_slice_dataset(config, [training_view(config, full)], training=False)
    _, at_inference = lesion_input(full, full.breast, config.inputs, {"safe_distance_mm": config.safe_distance_mm})
    in_training = dataset.input_slices(0)
    assert in_training.shape[:2] == (at_inference.shape[1], len(inputs))
    assert np.allclose(in_training.sum(axis=(2, 3)), np.moveaxis(at_inference, 0, 1).sum(axis=(2, 3)), rtol=2e-3,
                       atol=0.5)
    # the first slice's lower neighbour is a real slice below the breast, not the slice repeated
    first = np.moveaxis(at_inference, 0, 1)[0]
    assert not np.allclose(first[1], first[2])


def test_hard_negative_patches_centre_on_strong_enhancement_that_is_no_lesion():
    """With enhancing_ratio 1 every patch holds the hot spot; with the plain sampler few do."""
    image = np.zeros((3, 128, 128), np.float32)
    image[:, 8:120, 8:120] = 0.1
    image[2, 100:104, 10:14] = 5.0  # subtraction channel: a small strongly enhancing spot in a corner
    label = np.zeros((1, 128, 128), np.float32)
    label[0, 20:26, 100:106] = 1

    def share_with_spot(patches: dict) -> float:
        config = config_from_dict({"name": "x", "task": "lesion", "dataset": "d.csv", "augmentation": 0.0,
                                   "inputs": ["pre", "post", "subtraction"], "preprocessing": {"subtraction": True},
                                   "patches": {"size": [32, 32], **patches}})
        transform = slice_training_transform(config)
        hits = []
        for seed in range(40):
            transform.set_random_state(seed)
            patch = transform({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
            assert set(patch) == {"image", "label"} and patch["image"].shape == (3, 32, 32)
            hits.append(float(patch["image"][2].max()) == 5.0)
        return float(np.mean(hits))

    assert share_with_spot({"foreground_ratio": 0.0, "enhancing_ratio": 1.0}) == 1.0
    assert share_with_spot({"foreground_ratio": 0.0}) < 0.3


def uptake_steps(transform: Compose) -> list[RandContrastUptaked]:
    """The contrast uptake transforms anywhere in a (nested) composition."""
    steps = []
    for step in transform.transforms:
        if isinstance(step, Compose):
            steps += uptake_steps(step)
        elif isinstance(step, RandContrastUptaked):
            steps.append(step)
    return steps


def test_contrast_uptake_range_reaches_the_training_augmentation():
    values = {"name": "x", "task": "lesion", "dataset": "d.csv", "inputs": ["pre", "post", "enhancement"],
              "augmentation": 1.0}
    assert uptake_steps(slice_training_transform(config_from_dict(values))) == []
    transform = slice_training_transform(config_from_dict({**values, "contrast_uptake_range": [0.6, 1.4]}))
    (uptake,) = uptake_steps(transform)
    assert np.exp(uptake.log_range) == pytest.approx((0.6, 1.4))
    assert uptake.post_pairs == [(1, 0)] and uptake.enhancement == [2]


def test_a_configuration_extends_another_with_its_paths_read_from_its_own_folder(tmp_path):
    """The extending file's keys win, nested sections merge key by key, and each file's relative paths are read
    from the folder of the file that names them."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "parent.json").write_text(json.dumps({
        "name": "parent", "task": "lesion", "dataset": "data/studies.csv", "output_dir": "runs",
        "optimisation": {"epochs": 7, "batch_size": 4}, "preprocessing": {"spacing_mm": [2.0, 2.0]}}))
    (tmp_path / "child.json").write_text(json.dumps({
        "extends": "base/parent.json", "name": "child", "output_dir": "mine", "optimisation": {"epochs": 2}}))
    config = load_config(tmp_path / "child.json")
    assert config.name == "child"
    assert config.dataset == str((tmp_path / "base" / "data" / "studies.csv").resolve())
    assert config.output_dir == str((tmp_path / "mine").resolve())
    assert (config.optimisation.epochs, config.optimisation.batch_size) == (2, 4)
    assert config.preprocess.spacing_mm == (2.0, 2.0)


def test_configurations_that_extend_each_other_in_a_circle_or_a_missing_file_are_named(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json", "name": "a"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json", "name": "b"}))
    with pytest.raises(InputError, match="circle: a.json -> b.json -> a.json"):
        load_config(tmp_path / "a.json")
    (tmp_path / "c.json").write_text(json.dumps({"extends": "gone.json", "name": "c"}))
    with pytest.raises(InputError, match="training configuration not found.*extended by c.json") as error:
        load_config(tmp_path / "c.json")
    assert error.value.path.endswith("gone.json")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid_configurations(path):
    """Every recipe in configs/ loads, names a known architecture, and reads its data from data/."""
    config = load_config(path)
    assert config.name == path.stem or path.stem.startswith("bundled_")
    assert Path(config.dataset).is_relative_to(path.parents[1].resolve() / "data")
    assert config.architecture in ARCHITECTURES
