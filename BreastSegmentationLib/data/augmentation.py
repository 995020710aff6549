"""Training augmentation (MONAI dictionary transforms) for 2-D slices and 3-D patches.

Used for domain randomisation of the bundled models: spatial changes applied alike to ``image``, ``label`` and
``lesion_weight`` (when a sample has one), intensity changes to ``image`` only. Mirroring is left-right only:
anterior-posterior and head-feet flips would give anatomy that never occurs (breasts behind the chest wall). :class:`RandContrastUptaked` scales the contrast
uptake of a whole sample, as contrast dose, injection timing and field strength do between protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
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
    RandomizableTransform,
)

from ..errors import InputError
from .preprocessing import ENHANCEMENT_RANGE, parse_input

IMAGE, LABEL, LESION_WEIGHT = "image", "label", "lesion_weight"
KEYS = (IMAGE, LABEL, LESION_WEIGHT)
#: At strength 1: in-plane rotation up to 15 degrees, scaling by up to 15 %, as small as anatomy allows.
MAX_ROTATION_RAD = 0.26
MAX_SCALING = 0.15


def spatial_transforms(dims: int, strength: float = 1.0) -> list:
    """Left-right flip, in-plane rotation and scaling; linear for the image, nearest for the label and weights.

    Arrays are channel-first (C, y, x) or (C, z, y, x): x, the left-right axis, is the last one. MONAI's first
    rotation angle turns the last two axes, i.e. in-plane for both layouts.
    """
    left_right_axis = dims - 1
    rotation = (MAX_ROTATION_RAD * strength,) + (0.0,) * (dims - 2) * 2
    return [
        RandFlipd(KEYS, prob=0.5, spatial_axis=left_right_axis, allow_missing_keys=True),
        RandAffined(KEYS, prob=0.3, rotate_range=rotation, scale_range=(MAX_SCALING * strength,) * dims,
                    mode=("bilinear", "nearest", "nearest"), padding_mode=("border", "zeros", "zeros"),
                    allow_missing_keys=True),
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


class RandContrastUptaked(RandomizableTransform):
    """Multiply a sample's contrast uptake by one random factor, log-uniform in ``factor_range``.

    The enhancement at the first post-contrast phase differs between protocols (contrast dose, time of the first
    phase after injection, field strength) by a factor for every tissue alike. A model trained at one protocol's
    uptake can learn an absolute enhancement level ("lesions enhance more than 50 %") and then miss a lesion that
    enhances ten times as much as this woman's gland but less than that level. Scaling every enhancing input by one
    factor keeps each tissue's enhancement relative to the others, so the model must judge it against its
    surroundings. MONAI's intensity transforms act on all channels alike and cannot do this: the pre-contrast
    channel must stay as it is. ``inputs`` names the image's channels (model input names, see
    :func:`~.preprocessing.parse_input`): "post" becomes pre + factor (post - pre), subtraction, enhancement and
    excess are multiplied by the factor (enhancement clipped to its range again).
    """

    def __init__(self, inputs: Sequence[str], factor_range: Sequence[float]) -> None:
        super().__init__(prob=1.0)
        low, high = (float(value) for value in factor_range)
        if not 0.0 < low <= high:
            raise InputError(f"contrast uptake factor range must satisfy 0 < low <= high, got {list(factor_range)}")
        self.log_range = (np.log(low), np.log(high))
        parsed = [parse_input(name) for name in inputs]
        self.post_pairs = [(index, parsed.index(("pre", offset))) for index, (channel, offset) in enumerate(parsed)
                           if channel == "post" and ("pre", offset) in parsed]
        if len(self.post_pairs) < sum(channel == "post" for channel, _ in parsed):
            raise InputError("contrast uptake scaling needs the pre-contrast input of every post-contrast input "
                             f"(same slice offset), got inputs {list(inputs)}")
        self.scaled = [index for index, (channel, _) in enumerate(parsed) if channel in ("subtraction", "excess")]
        self.enhancement = [index for index, (channel, _) in enumerate(parsed) if channel == "enhancement"]
        self.factor = 1.0

    def randomize(self, data: object = None) -> None:
        self.factor = float(np.exp(self.R.uniform(*self.log_range)))

    def __call__(self, sample: dict) -> dict:
        self.randomize()
        image = torch.as_tensor(sample[IMAGE]).clone()
        for post, pre in self.post_pairs:
            image[post] = image[pre] + self.factor * (image[post] - image[pre])
        image[self.scaled] *= self.factor
        image[self.enhancement] = (image[self.enhancement] * self.factor).clamp(*ENHANCEMENT_RANGE)
        return {**sample, IMAGE: image}


def training_transforms(dims: int, strength: float = 1.0, inputs: Sequence[str] | None = None,
                        uptake_range: Sequence[float] | None = None) -> Compose:
    """All training augmentation for ``dims``-D samples {"image", "label"}; strength 0 is the identity.

    With ``uptake_range`` (and the channel names ``inputs``) the contrast uptake is scaled
    (:class:`RandContrastUptaked`) after the spatial changes and before the intensity changes that act on all
    channels alike.
    """
    if dims not in (2, 3):
        raise ValueError(f"augmentation is for 2-D or 3-D samples, not {dims}-D")
    if strength <= 0.0:
        return Compose([])
    uptake = [] if uptake_range is None else [RandContrastUptaked(inputs or (), uptake_range)]
    return Compose(spatial_transforms(dims, strength) + uptake + intensity_transforms(dims, strength))


def draw_seed() -> int:
    """A seed from torch's generator, which the trainer seeds per epoch and DataLoader workers per worker."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def augment(sample: dict, transform: Callable, seed: int) -> dict:
    """Apply ``transform`` to ``sample`` reproducibly from ``seed``; tensors come back as plain torch tensors."""
    if isinstance(transform, Randomizable):
        transform.set_random_state(seed=seed)
    result = transform(sample)
    return {key: value.as_tensor() if isinstance(value, MetaTensor) else value for key, value in result.items()}
