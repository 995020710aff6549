"""Model cards: save/load round trip, and every way weights can be wrong ends in a clear InputError."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.models.cards import ModelCard, find_cards, load_model, save_model, sha256_file
from BreastSegmentationLib.models.registry import build_model


def small_card(**changes) -> ModelCard:
    fields = {
        "name": "lesion-tiny",
        "task": "lesion",
        "architecture": "unetpp_small",
        "architecture_kwargs": {"features": (4, 4, 8, 8, 16, 4), "norm": "instance", "act": "leakyrelu"},
        "inputs": ["pre", "post", "subtraction"],
        "preprocessing": {"spacing_mm": (0.8, 0.8, 2.0), "normalisation": "zscore", "clip_percentiles": [0.5, 99.5]},
        "threshold": 0.4,
        "training": {"data": "synthetic", "command": "pytest", "epochs": 0},
        "metrics": {"dice": 0.5},
        "licence": "Apache-2.0",
    }
    return ModelCard(**{**fields, **changes})


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    card = small_card()
    model = card.build().eval()
    return model, save_model(model, card, tmp_path / "models")


def test_round_trip_gives_identical_outputs_and_card(saved: tuple[torch.nn.Module, Path]) -> None:
    model, card_path = saved
    assert sorted(p.name for p in card_path.parent.iterdir()) == ["lesion-tiny.json", "lesion-tiny.safetensors"]
    loaded, card = load_model(card_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    assert card.sha256 == sha256_file(card_path.with_suffix(".safetensors"))
    assert card.weights == "lesion-tiny.safetensors" and card.threshold == 0.4
    assert card.preprocessing["spacing_mm"] == [0.8, 0.8, 2.0]
    assert card == ModelCard.from_json(card_path)
    assert dataclasses.replace(card, weights="", sha256="") == small_card()


def test_batch_norm_statistics_travel_with_the_weights(tmp_path: Path) -> None:
    card = small_card(architecture_kwargs={"features": (4, 4, 8, 8, 16, 4)})
    model = card.build().train()
    model(torch.randn(4, 3, 32, 32))  # updates running means
    model.eval()
    loaded, _ = load_model(save_model(model, card, tmp_path))
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_tampered_byte_is_refused_naming_sha256(saved: tuple[torch.nn.Module, Path]) -> None:
    _, card_path = saved
    weights = card_path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256") as caught:
        load_model(card_path)
    assert caught.value.path == str(weights)


def test_truncated_weights_are_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, card_path = saved
    weights = card_path.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        load_model(card_path)


def test_missing_weights_are_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, card_path = saved
    card_path.with_suffix(".safetensors").unlink()
    with pytest.raises(InputError, match="missing") as caught:
        load_model(card_path)
    assert "lesion-tiny.safetensors" in str(caught.value)


def test_weights_of_another_architecture_are_refused_even_with_matching_sha(tmp_path: Path) -> None:
    other = small_card(name="other", architecture_kwargs={"features": (4, 4, 8, 8, 8, 4)})
    card_path = save_model(other.build(), other, tmp_path)
    data = json.loads(card_path.read_text())
    data["architecture_kwargs"]["features"] = [4, 4, 8, 8, 16, 4]
    card_path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="do not fit"):
        load_model(card_path)


def test_save_refuses_a_model_that_does_not_match_its_card_and_leaves_nothing(tmp_path: Path) -> None:
    card = small_card()
    with pytest.raises(ValueError, match="does not match its card"):
        save_model(build_model("unetpp_small", in_channels=3), card, tmp_path / "models")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"architecture": "resnet_unet"}, "unknown architecture"),
    ({"unexpected": 1}, "unknown model card keys: unexpected"),
    ({"inputs": ["pre", "t2"]}, "unknown input 't2'"),
    ({"inputs": ["pre", "subtraction@0"]}, "unknown input 'subtraction@0'"),
    ({"inputs": ["pre", "pre"]}, "must be distinct"),
    ({"task": "liver"}, "task must be one of"),
    ({"threshold": 1.5}, "threshold"),
    ({"min_lesion_mm3": -1.0}, "min_lesion_mm3"),
    ({"min_lesion_mm3": "20"}, "min_lesion_mm3"),
    ({"min_lesion_peak": 1.0}, "min_lesion_peak"),
    ({"min_lesion_peak": True}, "min_lesion_peak"),
    ({"test_time_mirroring": "yes"}, "test_time_mirroring"),
    ({"sha256": "abc"}, "sha256"),
    ({"weights": "../elsewhere.safetensors"}, "file name beside the card"),
    ({"weights": ["a.safetensors", "b.safetensors"]}, "lists of the same, non-zero length"),
    ({"weights": ["a.safetensors", "a.safetensors"], "sha256": ["0" * 64, "1" * 64]}, "must be distinct"),
    ({"weights": ["a.safetensors", "b.pt"], "sha256": ["0" * 64, "1" * 64]}, "file name beside the card"),
    ({"weights": ["a.safetensors"], "sha256": ["0" * 63]}, "64 lowercase"),
    ({"weights": [], "sha256": []}, "non-zero length"),
    ({"format_version": 99}, "newer"),
])
def test_invalid_cards_are_input_errors_naming_the_file(saved: tuple[torch.nn.Module, Path], change: dict,
                                                        message: str) -> None:
    _, card_path = saved
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), **change}))
    with pytest.raises(InputError, match=message) as caught:
        load_model(card_path)
    assert caught.value.path == str(card_path)


def test_card_lacking_keys_or_not_json_is_an_input_error(tmp_path: Path) -> None:
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({"name": "x", "task": "breast", "architecture": "unetpp", "inputs": ["pre"]}))
    with pytest.raises(InputError, match="lacks keys: format_version, weights, sha256"):
        ModelCard.from_json(lacking)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        ModelCard.from_json(broken)
    with pytest.raises(InputError, match="not found"):
        ModelCard.from_json(tmp_path / "absent.json")


def test_input_count_must_match_in_channels() -> None:
    with pytest.raises(InputError, match="in_channels=2 but 3 inputs"):
        small_card(architecture_kwargs={"in_channels": 2})


def test_find_cards_lists_cards_only(saved: tuple[torch.nn.Module, Path]) -> None:
    _, card_path = saved
    (card_path.parent / "history.json").write_text(json.dumps([{"epoch": 1}]))
    (card_path.parent / "notes.json").write_text("{broken")
    assert find_cards(card_path.parent) == [card_path]
    with pytest.raises(InputError, match="model folder not found"):
        find_cards(card_path.parent / "absent")
