"""Architectures by name: every model the project trains or loads is built here from MONAI pieces.

A model card stores an architecture name and its keyword options; :func:`build_model` turns them back into
the same network. Every model returns logits shaped ``(B, out_channels, *spatial)`` (DynUNet with deep
supervision returns its stacked heads only in training mode, as MONAI does).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.networks.nets import BasicUNetPlusPlus, Classifier, DynUNet, UNet
from torch import nn

from ..errors import InputError
from .fcn import FCNResNet

#: Normalisation options, by the names cards use, as MONAI layer arguments.
NORMS: dict[str, Any] = {"batch": "batch", "instance": ("instance", {"affine": True})}

#: Activation options: ReLU (seed 000 Table 1), LeakyReLU(0.1) (the seed-000 authors' code, MONAI's default), PReLU.
ACTIVATIONS: dict[str, Any] = {
    "relu": ("relu", {"inplace": True}),
    "leakyrelu": ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    "prelu": "prelu",
}


def _choice(table: Mapping[str, Any], value: str, option: str) -> Any:
    if value not in table:
        raise InputError(f"{option} must be one of {sorted(table)}, not {value!r}")
    return table[value]


class UNetPlusPlus(BasicUNetPlusPlus):
    """MONAI's UNet++ returning the final output tensor instead of a one-element list (same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[-1]


def build_unetpp(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """UNet++ (seed 000): 5 levels, 3x3 convs, max-pool down, transposed-conv up."""
    return UNetPlusPlus(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        norm=_choice(NORMS, norm, "norm"),
        act=_choice(ACTIVATIONS, act, "act"),
        dropout=dropout,
    )


def build_fcn_resnet50(in_channels: int, out_channels: int, dropout: float = 0.1) -> nn.Module:
    """FCN on a dilated ResNet-50 (seed 001)."""
    return FCNResNet(in_channels=in_channels, out_channels=out_channels, backbone="resnet50", dropout=dropout)


def build_residual_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    channels: Sequence[int] = (32, 64, 128, 256, 512),
    num_res_units: int = 2,
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """U-Net with residual units and skip connections (seed 004), MONAI's ``UNet``; strides 2 between levels.

    MONAI's last up-sampling block ends in batch norm + ReLU on its output channels; with one output channel that
    squeezes the logit through a one-channel ReLU and training stalls. So the U-Net keeps ``channels[0]`` feature
    maps at full resolution and a 1x1 convolution makes the logits, as in the original U-Net.
    """
    unet = UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=channels[0],
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        norm=_choice(NORMS, norm, "norm"),
        act=_choice(ACTIVATIONS, act, "act"),
        dropout=dropout,
    )
    head = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(channels[0], out_channels, kernel_size=1)
    return nn.Sequential(unet, head)


def nnunet_kernels_strides(
    patch_size: Sequence[int], spacing_mm: Sequence[float]
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's plan of conv kernels and strides for a patch (axes in tensor order, e.g. z, y, x).

    Written here because MONAI ships it only in its tutorials: an axis is downsampled while its spacing is
    within twice the finest one and it is at least 8 voxels long; axes much coarser than the finest get 1-wide
    kernels until the others catch up.
    """
    if len(patch_size) != len(spacing_mm):
        raise InputError(f"patch_size {list(patch_size)} and spacing_mm {list(spacing_mm)} differ in length")
    if min(spacing_mm) <= 0 or min(patch_size) <= 0:
        raise InputError(f"patch_size {list(patch_size)} and spacing_mm {list(spacing_mm)} must be positive")
    sizes, spacings = list(patch_size), [float(value) for value in spacing_mm]
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while True:
        ratios = [value / min(spacings) for value in spacings]
        stride = [2 if ratio <= 2 and size >= 8 else 1 for ratio, size in zip(ratios, sizes)]
        if all(value == 1 for value in stride):
            break
        if any(size % step for size, step in zip(sizes, stride)):
            raise InputError(f"patch_size {list(patch_size)} cannot be halved evenly at size {sizes}")
        kernels.append([3 if ratio <= 2 else 1 for ratio in ratios])
        strides.append(stride)
        sizes = [size // step for size, step in zip(sizes, stride)]
        spacings = [value * step for value, step in zip(spacings, stride)]
    kernels.append([3] * len(sizes))
    return kernels, strides


def build_dynunet(
    in_channels: int,
    out_channels: int,
    patch_size: Sequence[int] = (32, 128, 128),
    spacing_mm: Sequence[float] = (2.0, 1.0, 1.0),
    filters: Sequence[int] | None = None,
    res_block: bool = False,
    deep_supervision: bool = False,
    deep_supr_num: int = 1,
) -> nn.Module:
    """nnU-Net-like full-resolution 3-D U-Net (seed 003): MONAI ``DynUNet`` planned for one patch size.

    ``patch_size`` (voxels) and ``spacing_mm`` are in tensor axis order (z, y, x), as SimpleITK arrays are.
    """
    if len(patch_size) != 3:
        raise InputError(f"patch_size must have 3 values (z, y, x), not {list(patch_size)}")
    kernels, strides = nnunet_kernels_strides(patch_size, spacing_mm)
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=None if filters is None else list(filters),
        res_block=res_block,
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
    )


def build_patch_classifier(
    in_channels: int,
    out_channels: int,
    patch_voxels: int = 32,
    channels: Sequence[int] = (16, 32, 64, 64),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 1,
) -> nn.Module:
    """3-D classifier of cubes of ``patch_voxels``: residual conv units with instance norm and PReLU, one logit per
    class (MONAI's Classifier); the focus classifier of inference/foci.py."""
    return Classifier(in_shape=(in_channels, patch_voxels, patch_voxels, patch_voxels), classes=out_channels,
                      channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units)


@dataclass(frozen=True)
class ArchitectureSpec:
    """One named architecture: its builder, the options that differ from the builder's defaults, and facts."""

    builder: Callable[..., nn.Module]
    spatial_dims: int
    description: str
    source: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "fcn_resnet50": ArchitectureSpec(
        build_fcn_resnet50, 2, "FCN, ResNet-50 dilated to output stride 8 (torchvision layout)", "seed 001 (BRS)"
    ),
    "unetpp": ArchitectureSpec(
        build_unetpp, 2, "UNet++, 5 levels, base 32 filters (Table 1)", "seed 000 (lesions after BRS)"
    ),
    "unetpp_small": ArchitectureSpec(
        build_unetpp,
        2,
        "UNet++ with half the filters at every level (a third of the CPU time), for bundled models",
        "seed 000, reduced",
        {"features": (16, 16, 32, 64, 128, 16)},
    ),
    "unet": ArchitectureSpec(
        build_residual_unet, 2, "U-Net with residual units and skip connections", "seed 004 (custom U-Net)"
    ),
    "unet_small": ArchitectureSpec(
        build_residual_unet,
        2,
        "residual U-Net with half the channels, for CPU-sized bundled models",
        "seed 004, reduced",
        {"channels": (16, 32, 64, 128, 256)},
    ),
    "classifier3d": ArchitectureSpec(
        build_patch_classifier, 3, "3-D patch classifier (MONAI Classifier): is a blob a lesion?", "this project (foci)"
    ),
    "dynunet3d": ArchitectureSpec(
        build_dynunet, 3, "nnU-Net-like 3-D full-resolution U-Net for patches (MONAI DynUNet)", "seed 003 (nnU-Net)"
    ),
}


def _spec(name: str) -> ArchitectureSpec:
    if name not in ARCHITECTURES:
        raise InputError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def default_options(name: str) -> dict[str, Any]:
    """The options of architecture ``name`` (besides in/out channels) with their default values."""
    spec = _spec(name)
    parameters = inspect.signature(spec.builder).parameters.values()
    options = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**options, **spec.defaults}


def build_model(name: str, in_channels: int = 2, out_channels: int = 1, **options: Any) -> nn.Module:
    """Build architecture ``name``; ``options`` override its defaults (see :func:`default_options`).

    Unknown names, unknown options and values the network cannot be built with raise :class:`InputError`,
    because they come from model cards and command lines.
    """
    known = default_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"architecture {name!r} has no option {', '.join(unknown)}; options: {', '.join(known)}")
    settings = {**known, **options}
    try:
        return _spec(name).builder(in_channels=in_channels, out_channels=out_channels, **settings)
    except (TypeError, ValueError) as error:
        raise InputError(f"architecture {name!r} cannot be built with {settings}: {error}") from error


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


@functools.lru_cache(maxsize=None)
def default_parameter_count(name: str) -> int:
    """Parameters of ``name`` built with its defaults, 2 inputs and 1 output."""
    return parameter_count(build_model(name))


def list_architectures() -> list[dict[str, Any]]:
    """Every architecture with its facts, default options and default parameter count (JSON-able)."""
    return [
        {
            "name": name,
            "description": spec.description,
            "source": spec.source,
            "spatial_dims": spec.spatial_dims,
            "parameters": default_parameter_count(name),
            "options": {key: list(value) if isinstance(value, tuple) else value
                        for key, value in default_options(name).items()},
        }
        for name, spec in ARCHITECTURES.items()
    ]
