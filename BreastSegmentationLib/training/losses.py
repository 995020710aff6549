"""Segmentation losses by name: weighted sums of MONAI's Dice, IoU and Focal losses and binary cross-entropy.

Every loss takes logits ``(B, C, *spatial)`` and a binary target of the same shape; each output channel is
an independent sigmoid (the project's models have 1 output). A loss is data: which terms, their default
weights, and whether the weights must sum to 1 (a convex mix such as the seed-000 hybrid loss). An optional
``lesion_weight`` map of the same shape weighs the cross-entropy of foreground voxels (small lesions count more,
see :func:`~..data.slices.lesion_weights`); background voxels keep weight 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from ..errors import InputError


class ForegroundWeightedBCE(nn.Module):
    """Binary cross-entropy on logits, the foreground voxels weighted by an optional ``lesion_weight`` map.

    ``nn.BCEWithLogitsLoss`` fixes its weight when it is built; this weight changes with every batch.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                lesion_weight: torch.Tensor | None = None) -> torch.Tensor:
        weight = None if lesion_weight is None else torch.where(target > 0, lesion_weight, 1.0)
        return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


#: Loss terms by name; ``batch_dice`` makes Dice and IoU pool the whole batch (nnU-Net's batch Dice).
TERMS: dict[str, Callable[[bool], nn.Module]] = {
    "dice": lambda batch_dice: DiceLoss(sigmoid=True, batch=batch_dice),
    "iou": lambda batch_dice: DiceLoss(sigmoid=True, jaccard=True, batch=batch_dice),
    "focal": lambda batch_dice: FocalLoss(gamma=2.0),
    "bce": lambda batch_dice: ForegroundWeightedBCE(),
}
#: Terms that take the ``lesion_weight`` map (Dice and IoU are ratios over the batch; their voxels stay equal).
VOXEL_WEIGHTED_TERMS = ("bce",)


@dataclass(frozen=True)
class LossSpec:
    """A named loss: default weight per term, whether weights must sum to 1, and where it comes from."""

    weights: Mapping[str, float]
    convex: bool
    description: str
    source: str
    batch_dice: bool = False


LOSSES: dict[str, LossSpec] = {
    "hybrid": LossSpec({"dice": 0.1, "focal": 0.45, "bce": 0.45}, True,
                       "0.1 Dice + 0.45 Focal + 0.45 cross-entropy", "seed 000 Eq. 1"),
    "dice": LossSpec({"dice": 1.0}, True, "soft Dice", "seed 001 (BRS)"),
    "dice_ce": LossSpec({"dice": 1.0, "bce": 1.0}, False,
                        "batch Dice + cross-entropy", "seed 003 (nnU-Net)", batch_dice=True),
    "dice_iou": LossSpec({"dice": 0.4, "iou": 0.6}, True, "1 - (0.4 Dice + 0.6 IoU)", "seed 002"),
    "bce_dice": LossSpec({"bce": 1.0, "dice": 1.0}, False, "cross-entropy + Dice", "seed 004"),
}


class WeightedLoss(nn.Module):
    """Sum of weighted loss terms; :meth:`components` gives each term's value for logging."""

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)

    def components(self, logits: torch.Tensor, target: torch.Tensor,
                   lesion_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The value of every term before the terms' weights (the cross-entropy with ``lesion_weight``)."""
        target = target.to(logits.dtype)
        return {name: term(logits, target, lesion_weight) if name in VOXEL_WEIGHTED_TERMS else term(logits, target)
                for name, term in self.terms.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                lesion_weight: torch.Tensor | None = None) -> torch.Tensor:
        parts = self.components(logits, target, lesion_weight)
        return sum(self.weights[name] * value for name, value in parts.items())


def _checked_weights(name: str, spec: LossSpec, overrides: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(overrides) - set(spec.weights))
    if unknown:
        raise InputError(f"loss {name!r} has no term {', '.join(unknown)}; its terms: {', '.join(spec.weights)}")
    weights = {term: float(overrides.get(term, default)) for term, default in spec.weights.items()}
    if any(not math.isfinite(value) or value < 0 for value in weights.values()):
        raise InputError(f"loss {name!r}: weights must be finite and not negative, got {weights}")
    total = sum(weights.values())
    if total == 0:
        raise InputError(f"loss {name!r}: at least one weight must be positive, got {weights}")
    if spec.convex and not math.isclose(total, 1.0, abs_tol=1e-6):
        raise InputError(f"loss {name!r}: weights must sum to 1, got {weights} (sum {total:g})")
    return weights


def build_loss(name: str, **weights: float) -> WeightedLoss:
    """Loss ``name`` (see :data:`LOSSES`), with term weights overridden by keyword, e.g. ``dice=0.2``."""
    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    spec = LOSSES[name]
    checked = {term: value for term, value in _checked_weights(name, spec, weights).items() if value > 0}
    return WeightedLoss({term: TERMS[term](spec.batch_dice) for term in checked}, checked)
