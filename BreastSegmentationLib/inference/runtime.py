"""Device choice and torch settings shared by training and inference."""

from __future__ import annotations

import os

import torch

from ..errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


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


def configure_cpu_threads(threads: int | None = None) -> None:
    """Use ``threads`` intra-op threads (default: the CPUs this process may use)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads or available))
