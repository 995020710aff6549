"""Training augmentation (MONAI dictionary transforms) for 2-D slices and 3-D patches.

Used for domain randomisation of the bundled models: spatial changes applied alike to ``image`` and ``label``,
intensity changes to ``image`` only. Mirroring is left-right only: anterior-posterior and head-feet flips would
give anatomy that never occurs (breasts behind the chest wall).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

IMAGE, LABEL = "image", "label"
KEYS = (IMAGE, LABEL)
#: At strength 1: in-plane rotation up to 15 degrees, scaling by up to 15 %, as small as anatomy allows.
MAX_ROTATION_RAD = 0.26
MAX_SCALING = 0.15


def spatial_transforms(dims: int, strength: float = 1.0) -> list:
    """Left-right flip, in-plane rotation and scaling; linear for the image, nearest for the label.

    Arrays are channel-first (C, y, x) or (C, z, y, x): x, the left-right axis, is the last one. MONAI's first
    rotation angle turns the last two axes, i.e. in-plane for both layouts.
    """
    left_right_axis = dims - 1
    rotation = (MAX_ROTATION_RAD * strength,) + (0.0,) * (dims - 2) * 2
    return [
        RandFlipd(KEYS, prob=0.5, spatial_axis=left_right_axis, allow_missing_keys=True),
        RandAffined(KEYS, prob=0.3, rotate_range=rotation, scale_range=(MAX_SCALING * strength,) * dims,
                    mode=("bilinear", "nearest"), padding_mode=("border", "zeros"), allow_missing_keys=True),
    ]


def intensity_transforms(dims: int, strength: float = 1.0) -> list:
    """Brightness, shift, gamma, noise, blur, low resolution and bias field, with nnU-Net-like probabilities."""
    return [
        RandScaleIntensityd(IMAGE, factors=0.25 * strength, prob=0.15),
        RandShiftIntensityd(IMAGE, offsets=0.1 * strength, prob=0.15),
        RandAdjustContrastd(IMAGE, gamma=(1.0 - 0.3 * strength, 1.0 + 0.5 * strength), prob=0.3),
        RandGaussianNoised(IMAGE, std=0.1 * strength, prob=0.15),
        RandGaussianSmoothd(IMAGE, sigma_x=(0.5, 0.5 + 0.5 * strength), sigma_y=(0.5, 0.5 + 0.5 * strength),
                            sigma_z=(0.5, 0.5 + 0.5 * strength), prob=0.1),
        RandSimulateLowResolutiond(IMAGE, zoom_range=(1.0 - 0.5 * strength, 1.0), prob=0.125,
                                   upsample_mode="bilinear" if dims == 2 else "trilinear"),
        RandBiasFieldd(IMAGE, degree=3, coeff_range=(0.0, 0.1 * strength), prob=0.15),
    ]


def training_transforms(dims: int, strength: float = 1.0) -> Compose:
    """All training augmentation for ``dims``-D samples {"image", "label"}; strength 0 is the identity."""
    if dims not in (2, 3):
        raise ValueError(f"augmentation is for 2-D or 3-D samples, not {dims}-D")
    if strength <= 0.0:
        return Compose([])
    return Compose(spatial_transforms(dims, strength) + intensity_transforms(dims, strength))


def draw_seed() -> int:
    """A seed from torch's generator, which the trainer seeds per epoch and DataLoader workers per worker."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def augment(sample: dict, transform: Callable, seed: int) -> dict:
    """Apply ``transform`` to ``sample`` reproducibly from ``seed``; tensors come back as plain torch tensors."""
    if isinstance(transform, Randomizable):
        transform.set_random_state(seed=seed)
    result = transform(sample)
    return {key: value.as_tensor() if isinstance(value, MetaTensor) else value for key, value in result.items()}
