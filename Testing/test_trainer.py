"""The training loop: learning, best weights kept, early stopping, resume, patient-level splits."""

from __future__ import annotations

import csv

import pytest
import torch
from torch.utils.data import Dataset

from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.training.splits import split_patients
from BreastSegmentationLib.training.trainer import (
    CHECKPOINT_NAME,
    LOG_NAME,
    OptimisationSettings,
    fit,
)


class BrightSquares(Dataset):
    """Slices whose label is where the first channel is bright: learnable by a tiny network."""

    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand((count, 2, 16, 16), generator=generator)
        self.labels = (self.images[:, :1] > 0.6).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))


def run(tmp_path, epochs: int, **overrides):
    settings = OptimisationSettings(**{"epochs": epochs, "batch_size": 4, "learning_rate": 5e-2, **overrides})
    return fit(tiny_model(), torch.nn.BCEWithLogitsLoss(), BrightSquares(64, 1), BrightSquares(8, 2), settings,
               tmp_path, torch.device("cpu"))


def test_fit_learns_and_logs_every_epoch(tmp_path):
    result = run(tmp_path, epochs=6)
    assert len(result.history) == 6
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_dice"] > 0.8
    with open(tmp_path / LOG_NAME) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(1, 7))


def test_best_weights_are_those_of_the_best_epoch(tmp_path):
    result = run(tmp_path, epochs=5, amp=False)  # full precision, to recompute the logged loss exactly
    best_row = min(result.history, key=lambda row: row["val_loss"])
    assert result.best_epoch == best_row["epoch"]
    model = tiny_model()
    model.load_state_dict(result.best_state)
    dataset = BrightSquares(8, 2)
    with torch.no_grad():
        loss = torch.nn.BCEWithLogitsLoss()(model(dataset.images), dataset.labels)
    assert loss.item() == pytest.approx(best_row["val_loss"], rel=1e-4)


def test_early_stopping_when_validation_stalls(tmp_path):
    result = run(tmp_path, epochs=20, early_stopping_patience=3, learning_rate=0.0)
    assert result.stopped_early
    assert len(result.history) < 20
    assert len(result.history) - result.best_epoch == 3


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path):
    uninterrupted = run(tmp_path / "whole", epochs=4)
    run(tmp_path / "split", epochs=2)
    resumed = run(tmp_path / "split", epochs=4)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    for key, value in uninterrupted.best_state.items():
        torch.testing.assert_close(resumed.best_state[key], value)
    checkpoint = torch.load(tmp_path / "split" / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["epoch"] == 3


def test_split_is_by_patient_and_deterministic():
    patients = [f"P{i:02d}" for i in range(12) for _ in range(3)]  # three cases per patient
    split = split_patients(patients, n_folds=5, n_test=2, seed=7)
    assert split == split_patients(patients, n_folds=5, n_test=2, seed=7)
    assert len(split.test_patients) == 2
    seen_in_validation = []
    for fold in split.folds:
        assert not set(fold.train_patients) & set(fold.val_patients)
        assert not set(fold.train_patients + fold.val_patients) & set(split.test_patients)
        seen_in_validation += fold.val_patients
    assert sorted(seen_in_validation) == sorted(set(patients) - set(split.test_patients))


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(InputError, match="too few"):
        split_patients(["a", "b", "c"], n_folds=5, n_test=2, seed=0)
