"""Losses: low on a perfect prediction, high on an inverted one, and equal to MONAI's pieces combined by hand."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss

from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.training.losses import LOSSES, build_loss


@pytest.fixture
def target() -> torch.Tensor:
    """Two 2-D masks with a square and a disc."""
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, 0, 8:20, 10:24] = 1
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    mask[1, 0] = (((yy - 16) ** 2 + (xx - 12) ** 2) < 49).float()
    return mask


def confident_logits(mask: torch.Tensor) -> torch.Tensor:
    return (mask * 2 - 1) * 12.0


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_is_low_on_perfect_and_high_on_inverted_prediction(name: str, target: torch.Tensor) -> None:
    loss = build_loss(name)
    perfect = loss(confident_logits(target), target)
    inverted = loss(confident_logits(1 - target), target)
    assert perfect.ndim == 0 and perfect.item() < 0.01
    assert inverted.item() > 0.9
    assert inverted.item() > 100 * perfect.item()


def test_loss_has_gradients_and_accepts_integer_targets(target: torch.Tensor) -> None:
    logits = torch.zeros_like(target, requires_grad=True)
    build_loss("hybrid")(logits, target.to(torch.uint8)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_hybrid_weights_reproduce_monai_pieces_combined_by_hand(target: torch.Tensor) -> None:
    logits = torch.randn_like(target)
    expected = (0.2 * DiceLoss(sigmoid=True)(logits, target) + 0.3 * FocalLoss(gamma=2.0)(logits, target)
                + 0.5 * torch.nn.BCEWithLogitsLoss()(logits, target))
    actual = build_loss("hybrid", dice=0.2, focal=0.3, bce=0.5)(logits, target)
    torch.testing.assert_close(actual, expected)


def test_hybrid_default_is_seed_000_equation_1(target: torch.Tensor) -> None:
    logits = torch.randn_like(target)
    loss = build_loss("hybrid")
    assert loss.weights == {"dice": 0.1, "focal": 0.45, "bce": 0.45}
    parts = loss.components(logits, target)
    torch.testing.assert_close(loss(logits, target), 0.1 * parts["dice"] + 0.45 * parts["focal"] + 0.45 * parts["bce"])


def test_dice_ce_equals_monai_dice_ce_with_batch_dice(target: torch.Tensor) -> None:
    logits = torch.randn_like(target)
    torch.testing.assert_close(build_loss("dice_ce")(logits, target),
                               DiceCELoss(sigmoid=True, batch=True)(logits, target))


def test_dice_iou_is_one_minus_weighted_dice_and_iou(target: torch.Tensor) -> None:
    logits = torch.randn_like(target)
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * target).sum(dim=(2, 3))
    total = probabilities.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = 2 * intersection / total
    iou = intersection / (total - intersection)
    expected = (1 - (0.4 * dice + 0.6 * iou)).mean()
    torch.testing.assert_close(build_loss("dice_iou")(logits, target), expected, atol=1e-5, rtol=1e-5)


def test_zero_weight_drops_the_term(target: torch.Tensor) -> None:
    loss = build_loss("hybrid", dice=0.0, focal=0.5, bce=0.5)
    assert set(loss.terms) == {"focal", "bce"}


@pytest.mark.parametrize(("name", "weights", "message"), [
    ("hybrid", {"dice": 0.5}, "sum to 1"),
    ("hybrid", {"dice": -0.1, "focal": 0.6, "bce": 0.5}, "not negative"),
    ("hybrid", {"ce": 0.45}, "no term ce"),
    ("dice_iou", {"dice": 0.5, "iou": 0.6}, "sum to 1"),
    ("bce_dice", {"bce": 0.0, "dice": 0.0}, "at least one"),
    ("tversky", {}, "unknown loss"),
])
def test_bad_loss_settings_are_input_errors(name: str, weights: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_loss(name, **weights)


def test_unnormalised_sums_accept_any_positive_weights(target: torch.Tensor) -> None:
    logits = torch.randn_like(target)
    loss = build_loss("bce_dice", bce=2.0)
    parts = loss.components(logits, target)
    torch.testing.assert_close(loss(logits, target), 2.0 * parts["bce"] + parts["dice"])


def test_lesion_weight_scales_the_cross_entropy_of_foreground_voxels_only(target: torch.Tensor) -> None:
    """Weight w on the foreground: the foreground's share of the cross-entropy grows w times, the background's stays,
    whatever the map says outside the foreground; Dice ignores the map."""
    logits = torch.randn_like(target)
    loss = build_loss("dice_ce")
    plain = loss.components(logits, target)
    per_voxel = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    foreground, background = (per_voxel * target).sum(), (per_voxel * (1 - target)).sum()
    weight = torch.full_like(target, 3.0)  # 3 everywhere: only the foreground's 3 may count
    weighted = loss.components(logits, target, weight)
    torch.testing.assert_close(weighted["bce"], (3.0 * foreground + background) / target.numel())
    torch.testing.assert_close(weighted["dice"], plain["dice"])
    torch.testing.assert_close(loss.components(logits, target, torch.ones_like(target))["bce"], plain["bce"])
    torch.testing.assert_close(loss(logits, target, weight), weighted["dice"] + weighted["bce"])
