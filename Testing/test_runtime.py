"""Slice-wise inference: chosen slices only, padding, test-time mirroring, ensembles and mixed precision."""

from __future__ import annotations

import ctypes
import os
import platform

import numpy as np
import pytest
import torch

from BreastSegmentationLib.inference.runtime import (
    configure_cpu_memory,
    mixed_precision_dtype,
    precision_name,
    predict_slices,
)


class LeftHeavy(torch.nn.Module):
    """Logits = first channel + a ramp that falls from left to right (+ ``offset``): not mirror-symmetric."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(2.0, -2.0, inputs.shape[-1], dtype=inputs.dtype)
        return inputs[:, :1] + ramp + self.offset


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def test_only_the_chosen_slices_are_predicted_and_padding_is_cut_away(rng):
    channels = rng.normal(size=(1, 5, 20, 50)).astype(np.float32)  # 50 is padded to 64 for the network
    probabilities = predict_slices([LeftHeavy()], channels, [1, 3], torch.device("cpu"), batch_size=1)
    ramp = np.linspace(2.0, -2.0, 64)[:50]
    assert probabilities.shape == (5, 20, 50)
    assert not probabilities[[0, 2, 4]].any()
    assert np.allclose(probabilities[[1, 3]], sigmoid(channels[0, [1, 3]] + ramp), atol=1e-5)


def test_mirroring_averages_each_slice_with_its_mirror_image_mirrored_back(rng):
    channels = rng.normal(size=(1, 3, 16, 40)).astype(np.float32)
    probabilities = predict_slices([LeftHeavy()], channels, range(3), torch.device("cpu"), mirror=True)
    ramp = np.linspace(2.0, -2.0, 64)[:40]  # 40 columns padded to 64 on the right, in both views
    # Mirrored back, the mirror view's ramp runs the other way.
    expected = 0.5 * (sigmoid(channels[0] + ramp) + sigmoid(channels[0] + ramp[::-1]))
    assert np.allclose(probabilities, expected, atol=1e-5)
    assert not np.allclose(probabilities, predict_slices([LeftHeavy()], channels, range(3), torch.device("cpu")))


def test_an_ensemble_averages_the_probabilities_of_its_networks_in_both_views(rng):
    channels = rng.normal(size=(1, 4, 16, 40)).astype(np.float32)
    networks = [LeftHeavy(), LeftHeavy(offset=-3.0)]
    probabilities = predict_slices(networks, channels, range(4), torch.device("cpu"), batch_size=3, mirror=True)
    ramp = np.linspace(2.0, -2.0, 64)[:40]
    expected = np.mean([sigmoid(channels[0] + r + offset) for r in (ramp, ramp[::-1]) for offset in (0.0, -3.0)],
                       axis=0)
    assert np.allclose(probabilities, expected, atol=1e-5)
    alone = [predict_slices([network], channels, range(4), torch.device("cpu"), mirror=True) for network in networks]
    assert np.allclose(probabilities, 0.5 * (alone[0] + alone[1]), atol=1e-6)


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h): what the allocator holds, in bytes."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_state() -> MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def glibc_version() -> tuple[int, ...]:
    library, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".")) if library == "glibc" else ()


@pytest.mark.skipif(glibc_version() < (2, 33), reason="mallinfo2 needs glibc 2.33 or later")
def test_mixed_precision_is_bfloat16_on_cpus_with_native_support_and_off_on_request():
    cpu = torch.device("cpu")
    assert mixed_precision_dtype(cpu, enabled=False) is None
    native = torch.cpu._is_avx512_bf16_supported()
    assert mixed_precision_dtype(cpu, enabled=True) is (torch.bfloat16 if native else None)
    assert mixed_precision_dtype(torch.device("cuda"), enabled=True) is torch.float16
    assert [precision_name(p) for p in (None, torch.bfloat16, torch.float16)] == ["float32", "bfloat16", "float16"]


def test_networks_run_in_the_precision_asked_for_and_probabilities_stay_float32(rng):
    """A real convolution under bfloat16 autocast (emulated where the CPU has no bf16): its output is bfloat16
    inside, the probabilities come back float32 and within bfloat16's rounding of the float32 ones."""
    torch.manual_seed(0)
    network = torch.nn.Conv2d(3, 1, 3, padding=1)
    seen = []
    network.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    channels = rng.normal(size=(3, 4, 32, 32)).astype(np.float32)
    exact = predict_slices([network], channels, range(4), torch.device("cpu"))
    mixed = predict_slices([network], channels, range(4), torch.device("cpu"), precision=torch.bfloat16)
    assert seen == [torch.float32, torch.bfloat16]
    assert mixed.dtype == np.float32
    assert np.abs(mixed - exact).max() < 0.01 and not np.array_equal(mixed, exact)


def test_cpu_memory_settings_keep_large_freed_blocks_for_reuse(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    size = 64 * 2**20  # above glibc's largest automatic memory-map threshold (32 MB)
    assert configure_cpu_memory()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    before = malloc_state()
    block = np.ones(size, dtype=np.uint8)
    during = malloc_state()
    assert during.hblkhd == before.hblkhd  # served from the heap, not from a memory map of its own
    del block
    assert malloc_state().fordblks >= size  # freed, and kept in the process rather than handed back
