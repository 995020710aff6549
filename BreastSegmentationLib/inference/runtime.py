"""Device choice, torch settings and background threads shared by training and inference."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from monai.transforms import MeanEnsemble

from ..errors import InputError
from ..progress import Progress, silent

DEVICE_CHOICES = ("auto", "cpu", "cuda")
T = TypeVar("T")
MEAN = MeanEnsemble()
#: glibc's mallopt() parameters (malloc.h): the free memory at the top of the heap kept before trimming, and the
#: most blocks served by separate memory maps.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP_FREED_BYTES = 2**31 - 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA on a machine without it is a clear error."""
    if name not in DEVICE_CHOICES:
        raise InputError(f"unknown device '{name}', choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A human-readable device name, e.g. 'cuda:0 (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def mixed_precision_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast type of mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 instructions (about
    twice as fast there); None (float32) when not ``enabled`` or elsewhere, where bfloat16 would be emulated."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    bf16_native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return torch.bfloat16 if device.type == "cpu" and bf16_native else None


def precision_name(precision: torch.dtype | None) -> str:
    """'float32' for None, else the autocast type's name ('bfloat16', 'float16')."""
    return "float32" if precision is None else str(precision).removeprefix("torch.")


def in_background(function: Callable[..., T], *args) -> Future[T]:
    """``function(*args)`` started on a thread of its own, for work that leaves Python's GIL (ITK filters, most of
    numpy and scipy.ndimage) and may run beside the job's next step."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(function, *args)
    finally:
        pool.shutdown(wait=False)


def configure_cpu_threads(threads: int | None = None) -> None:
    """Use ``threads`` intra-op threads (default: the CPUs this process may use)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads or available))


def configure_cpu_memory() -> bool:
    """Back torch's large CPU tensors with huge pages and keep freed memory in the process for the next batch.

    Every batch of a forward pass allocates and frees activations of tens of MB. By default glibc gives each such
    block its own memory map and unmaps it when freed, so every batch faults its pages in again, and with huge pages
    the kernel may first have to compact memory. Served from the heap and never trimmed, the pages are reused: on
    this project's 2-core machine the lesion networks' forward passes got about 15 % faster and lost their stalls,
    which had made them 0.5-1 s slower inside the job than alone (``benchmarks/segment.py``). Neither torch nor
    MONAI offers a CPU caching allocator, hence glibc's own switches. For a process that runs the job and exits (the
    ``breastseg`` command): memory is not handed back until then. The huge-page switch counts only if no CPU tensor
    was allocated before. Returns whether glibc took the settings (False elsewhere, where nothing changes).
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))
    except (OSError, AttributeError):
        return False


def _pad_to_multiple(batch: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad the last two axes up to a multiple of ``multiple`` (U-Net poolings need it)."""
    height, width = batch.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        batch = np.pad(batch, [(0, 0)] * (batch.ndim - 2) + [(0, pad_h), (0, pad_w)])
    return batch, (height, width)


def _sigmoids_of(networks: Sequence[torch.nn.Module], slices: np.ndarray, device: torch.device,
                 multiple: int) -> list[np.ndarray]:
    """Sigmoid (float32) of each network's first output on one (N, C, y, x) batch, zero-padded for the networks once
    and cut back."""
    batch, (height, width) = _pad_to_multiple(slices, multiple)
    inputs = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    return [torch.sigmoid(network(inputs)[:, 0, :height, :width].float()).cpu().numpy() for network in networks]


def _mean_probability(networks: Sequence[torch.nn.Module], slices: np.ndarray, device: torch.device, multiple: int,
                      mirror: bool) -> np.ndarray:
    """Mean sigmoid probability of every network on a (N, C, y, x) batch and, with ``mirror``, on its left-right
    mirror image too (mirrored back): MONAI's MeanEnsemble over networks and views."""
    views = _sigmoids_of(networks, slices, device, multiple)
    if mirror:
        views += [np.ascontiguousarray(view[..., ::-1])
                  for view in _sigmoids_of(networks, slices[..., ::-1], device, multiple)]
    return views[0] if len(views) == 1 else MEAN(views)


def predict_slices(
    networks: Sequence[torch.nn.Module],
    channels: np.ndarray,
    slice_indices: Sequence[int],
    device: torch.device,
    batch_size: int = 8,
    multiple: int = 32,
    progress: Progress | None = None,
    stage: str = "inference",
    mirror: bool = False,
    precision: torch.dtype | None = None,
) -> np.ndarray:
    """Sigmoid probabilities of a 2-D model (one network, or the mean of an ensemble's) on chosen axial slices of a
    (C, z, y, x) volume.

    Slices not asked for stay 0, which is how the pipeline skips slices without breast. Written here rather
    than with MONAI's SliceInferer because that one runs every slice of the volume. ``mirror`` is nnU-Net's
    test-time mirroring, left-right only (the one flip the models were trained with; x is the last axis): the mean
    of the probabilities of each slice and of its mirror image, mirrored back. Each view is padded on the same side
    (right and bottom), so both show the network the tissue as the first does. It costs a second forward pass per
    network and removes most false positives of the lesion model, which a network seldom makes in both views.
    """
    progress = progress or silent()
    probabilities = np.zeros(channels.shape[1:], dtype=np.float32)
    indices = list(slice_indices)
    for network in networks:
        network.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=precision, enabled=precision is not None):
        for start in progress.track(range(0, len(indices), batch_size), stage):
            chosen = indices[start:start + batch_size]
            slices = np.moveaxis(channels[:, chosen], 1, 0)
            probabilities[chosen] = _mean_probability(networks, slices, device, multiple, mirror)
    return probabilities
