"""Ensembles: one model card naming the weights files of several networks of one architecture.

Inference averages the networks' probabilities, as nnU-Net averages its cross-validation folds. Networks trained on
different data seldom make the same false positive, so their mean keeps the lesions they agree on and drops most
of the rest (the bundled lesion model is such an ensemble). Members must share everything that decides what their
probabilities mean: task, architecture and its options, inputs and preprocessing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..io.outputs import atomic_output_dir
from .cards import ModelCard, checked_weights, load_networks

#: What members must have in common: the one preprocessing and network that the ensemble's card describes.
SHARED_KEYS = ("task", "architecture", "architecture_kwargs", "inputs", "preprocessing")


def _check_members(cards: Sequence[ModelCard], sources: Sequence[Path]) -> None:
    """InputError unless the cards are at least two single networks that agree on :data:`SHARED_KEYS` and whose
    weights files have distinct names (they will lie side by side)."""
    if len(cards) < 2:
        raise InputError("an ensemble needs at least two model cards")
    for card, source in zip(cards, sources):
        if len(card.members) != 1:
            raise InputError("this card is already an ensemble; list its members' cards instead", source)
        differing = [key for key in SHARED_KEYS if getattr(card, key) != getattr(cards[0], key)]
        if differing:
            raise InputError(f"differs from {sources[0].name} in {', '.join(differing)}: the networks' "
                             "probabilities would not mean the same thing", source)
    names = [card.weights for card in cards]
    if len(set(names)) != len(names):
        raise InputError(f"the members' weights files share a name ({', '.join(names)}); "
                         "retrain or copy them under distinct card names")


def ensemble_card(cards: Sequence[ModelCard], name: str, sources: Sequence[Path] | None = None) -> ModelCard:
    """The card of an ensemble of ``cards``: the first card's inference settings (threshold, cleaning, mirroring),
    every member's weights and SHA-256, and each member's training record and metrics under
    ``training["members"]``. The ensemble's own metrics start empty: measure them."""
    sources = list(sources) if sources is not None else [Path(card.name) for card in cards]
    _check_members(cards, sources)
    members = [{"card": card.name, "weights": card.weights, "sha256": card.sha256, "training": card.training,
                "metrics": card.metrics, "notes": card.notes} for card in cards]
    return dataclasses.replace(
        cards[0], name=name, weights=[card.weights for card in cards], sha256=[card.sha256 for card in cards],
        training={"members": members}, metrics={},
        notes=f"Ensemble of {len(cards)} networks ({', '.join(card.name for card in cards)}): inference averages "
              "their probabilities. Threshold, cleaning and mirroring are those of the first; check them on "
              "studies of your own.",
    )


def save_ensemble(card_paths: Sequence[str | os.PathLike], folder: str | os.PathLike, name: str) -> Path:
    """Write ``<name>.json``, an ensemble of the models of ``card_paths``, with copies of their weights into
    ``folder``. Each weights file is checked against its card's SHA-256 first, and the card is loaded back before
    anything is moved into place. Return the new card's path."""
    sources = [Path(path) for path in card_paths]
    cards = [ModelCard.from_json(path) for path in sources]
    card = ensemble_card(cards, name, sources)
    weights = [checked_weights(member.weights, member.sha256, source) for member, source in zip(cards, sources)]
    folder = Path(folder)
    with atomic_output_dir(folder) as staging:
        for path in weights:
            shutil.copyfile(path, staging / path.name)
        load_networks(card.to_json(staging / f"{name}.json"))
    return folder / f"{name}.json"
