"""Ensembles: one card for several networks, built by `breastseg ensemble` and checked file by file (the pipeline's
averaging: test_pipeline.py and test_runtime.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.models.cards import ModelCard, load_model, load_networks, save_model
from BreastSegmentationLib.models.ensemble import save_ensemble


def lesion_card(name: str, **changes) -> ModelCard:
    fields = {"name": name, "task": "lesion", "architecture": "unetpp_small", "inputs": ["pre", "post", "subtraction"],
              "threshold": 0.4, "min_lesion_peak": 0.45,
              "preprocessing": {"spacing_mm": [1.0, 1.0], "subtraction": True, "enhancement": True,
                                "crop": {"kind": "ov", "safe_distance_mm": 16.0, "multiple": 32}},
              "training": {"data": name}, "metrics": {"dice": 0.5}}
    return ModelCard(**{**fields, **changes})


def saved(card: ModelCard, folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_model(card.build(), card, folder)


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    """Two lesion models of one architecture, initialised differently."""
    return [saved(lesion_card(name), tmp_path / name, seed) for seed, name in enumerate(("bls_a", "bls_b"))]


def test_the_ensemble_card_lists_every_members_weights_and_keeps_the_first_cards_settings(tmp_path, members):
    card_path = save_ensemble(members, tmp_path / "ensemble", "bls_ab")
    card = ModelCard.from_json(card_path)
    firsts = [ModelCard.from_json(path) for path in members]
    assert card.name == "bls_ab" and card.weights == ["bls_a.safetensors", "bls_b.safetensors"]
    assert card.sha256 == [first.sha256 for first in firsts]
    assert (card.threshold, card.min_lesion_peak, card.inputs) == (0.4, 0.45, firsts[0].inputs)
    assert [member["training"] for member in card.training["members"]] == [{"data": "bls_a"}, {"data": "bls_b"}]
    assert card.metrics == {}
    assert sorted(p.name for p in card_path.parent.iterdir()) == ["bls_a.safetensors", "bls_ab.json",
                                                                  "bls_b.safetensors"]
    networks, _ = load_networks(card_path)
    originals = [load_model(path)[0] for path in members]
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        for network, original in zip(networks, originals):
            torch.testing.assert_close(network(x), original(x), rtol=0, atol=0)
        assert not torch.allclose(networks[0](x), networks[1](x))


def test_one_network_is_expected_where_an_ensemble_cannot_serve(tmp_path, members):
    card_path = save_ensemble(members, tmp_path / "ensemble", "bls_ab")
    with pytest.raises(InputError, match="ensemble of 2 networks"):
        load_model(card_path)
    with pytest.raises(InputError, match="already an ensemble"):
        save_ensemble([card_path, members[0]], tmp_path / "nested", "nested")
    assert not (tmp_path / "nested").exists()


def test_a_tampered_member_is_named_and_nothing_is_loaded(tmp_path, members):
    card_path = save_ensemble(members, tmp_path / "ensemble", "bls_ab")
    second = card_path.parent / "bls_b.safetensors"
    second.write_bytes(second.read_bytes()[:-10])
    with pytest.raises(InputError, match="SHA-256") as error:
        load_networks(card_path)
    assert "bls_b.safetensors" in str(error.value)
    (card_path.parent / "bls_a.safetensors").unlink()
    with pytest.raises(InputError, match="missing"):
        load_networks(card_path)


@pytest.mark.parametrize("change, message", [
    ({"inputs": ["pre", "post"]}, "differs from bls_a.json in inputs"),
    ({"preprocessing": {"spacing_mm": [2.0, 2.0]}}, "in preprocessing"),
    ({"task": "breast"}, "in task"),
])
def test_members_that_disagree_are_refused_before_anything_is_written(tmp_path, members, change, message):
    other = saved(lesion_card("bls_c", **change), tmp_path / "c", seed=2)
    with pytest.raises(InputError, match=message):
        save_ensemble([members[0], other], tmp_path / "ensemble", "bls_ac")
    assert not (tmp_path / "ensemble").exists()


def test_the_command_refuses_a_tampered_member_with_exit_2_and_writes_nothing(tmp_path, members, capsys):
    weights = members[1].with_suffix(".safetensors")
    weights.write_bytes(b"not the weights")
    code = main(["--progress", "none", "ensemble", *map(str, members), "--name", "bls_ab", "--out",
                 str(tmp_path / "ensemble")])
    assert code == 2 and "SHA-256" in capsys.readouterr().err
    assert not (tmp_path / "ensemble").exists()
