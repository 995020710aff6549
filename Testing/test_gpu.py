"""The same work on a CUDA GPU as on the CPU: skipped where torch sees no GPU (as on CI), run on a GPU machine with
``python -m pytest -q Testing/test_gpu.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.evaluation.metrics import segmentation_metrics
from BreastSegmentationLib.training.trainer import OptimisationSettings, fit
from test_trainer import BrightSquares, tiny_model

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def run_demo(out: Path, capsys, *options: str) -> dict:
    """``breastseg demo`` into ``out``; what it printed."""
    assert main(["--progress", "none", "demo", "--out", str(out), *options]) == 0
    return json.loads(capsys.readouterr().out)


def read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@requires_cuda
def test_the_demo_on_the_gpu_gives_the_cpus_result(tmp_path, capsys):
    """float32 on both devices: the same lesions and breast, probabilities within convolution rounding."""
    cpu = run_demo(tmp_path / "cpu", capsys, "--device", "cpu")
    gpu = run_demo(tmp_path / "gpu", capsys, "--device", "cuda")
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["network_precision"] == "float32"
    assert (gpu["lesion_count"], gpu["lesions_detected"], gpu["false_positive_lesions"]) == (
        cpu["lesion_count"], cpu["lesions_detected"], cpu["false_positive_lesions"])
    for name in ("breast.nii.gz", "lesions.nii.gz"):
        on_gpu, on_cpu = (sitk.ReadImage(str(tmp_path / device / name)) > 0 for device in ("gpu", "cpu"))
        assert segmentation_metrics(on_gpu, on_cpu)["dice"] > 0.99, name
    difference = np.abs(read_array(tmp_path / "gpu" / "lesion_probability.nii.gz")
                        - read_array(tmp_path / "cpu" / "lesion_probability.nii.gz"))
    assert difference.max() < 0.05


@requires_cuda
def test_the_demo_in_float16_on_the_gpu_finds_the_sample_lesion(tmp_path, capsys):
    printed = run_demo(tmp_path / "demo", capsys, "--device", "cuda", "--mixed-precision")
    assert printed["network_precision"] == "float16"
    assert (printed["lesions_detected"], printed["false_positive_lesions"]) == (1, 0)
    assert printed["dice"] > 0.7


@requires_cuda
def test_training_on_the_gpu_with_mixed_precision_learns(tmp_path):
    settings = OptimisationSettings(epochs=6, batch_size=4, learning_rate=5e-2, amp=True)
    result = fit(tiny_model(), torch.nn.BCEWithLogitsLoss(), BrightSquares(64, 1), BrightSquares(8, 2), settings,
                 tmp_path, torch.device("cuda"))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_dice"] > 0.8
    assert all(value.device.type == "cpu" for value in result.best_state.values())  # weights come back to the CPU
