"""Model cards: a JSON file next to a safetensors weights file says everything inference needs.

``<name>.json`` names the architecture and its options, the input channels in order, the preprocessing,
the threshold, the weights file and its SHA-256, how the model was trained and how it scored. Weights are
loaded without pickle (safetensors) and only after their SHA-256 matches the card, so a missing, truncated
or replaced file is an :class:`InputError`, never a silently wrong segmentation. A card may list several weights
files of its one architecture (an ensemble, :mod:`.ensemble`): inference averages their probabilities.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from ..data.preprocessing import CHANNELS, parse_input
from ..errors import InputError
from ..io.outputs import atomic_output_dir, atomic_output_file
from .registry import ARCHITECTURES, build_model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TASKS = ("breast", "lesion", "foci")
WEIGHTS_SUFFIX = ".safetensors"
#: Keys a card file must have; the others have defaults.
REQUIRED_KEYS = ("format_version", "name", "task", "architecture", "inputs", "weights", "sha256")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _json_normal(value: Any, key: str) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), or InputError if JSON cannot hold it."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise InputError(f"{key} cannot be written as JSON: {error}") from error


@dataclass
class ModelCard:
    """What a trained model is and how to use it; ``weights`` and ``sha256`` are filled in by :func:`save_model`."""

    name: str
    task: str
    architecture: str
    inputs: list[str]
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5
    min_lesion_mm3: float = 10.0  #: lesion models: smaller predicted lesions are dropped
    #: lesion models: a predicted lesion is kept only where its probability somewhere reaches this (None: no rule)
    min_lesion_peak: float | None = None
    #: average each slice's (a foci classifier: each cube's) prediction with that of its left-right mirror image
    #: (a second forward pass)
    test_time_mirroring: bool = False
    #: the safetensors file beside the card, or a list of them: an ensemble whose networks' probabilities are averaged
    weights: str | list[str] = ""
    #: the SHA-256 of ``weights``: one digest, or a list in the order of the files
    sha256: str | list[str] = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    notes: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self._check_identity()
        for key in ("architecture_kwargs", "preprocessing", "training", "metrics"):
            value = getattr(self, key)
            if not isinstance(value, dict):
                raise InputError(f"{key} must be a JSON object, not {type(value).__name__}")
            setattr(self, key, _json_normal(value, key))
        self._check_inputs()
        self._check_weights()
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold < 1:
            raise InputError(f"threshold must be a number between 0 and 1, not {self.threshold!r}")
        if isinstance(self.min_lesion_mm3, bool) or not isinstance(self.min_lesion_mm3, (int, float)) \
                or not self.min_lesion_mm3 >= 0:
            raise InputError(f"min_lesion_mm3 must be a number of at least 0, not {self.min_lesion_mm3!r}")
        peak = self.min_lesion_peak
        if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float)) or not 0 <= peak < 1):
            raise InputError(f"min_lesion_peak must be null or a number from 0 to below 1, not {peak!r}")
        if not isinstance(self.test_time_mirroring, bool):
            raise InputError(f"test_time_mirroring must be true or false, not {self.test_time_mirroring!r}")
        if not isinstance(self.licence, str) or not isinstance(self.notes, str):
            raise InputError("licence and notes must be text")

    def _check_identity(self) -> None:
        if not isinstance(self.format_version, int) or self.format_version < 1:
            raise InputError(f"format_version must be a positive integer, not {self.format_version!r}")
        if self.format_version > FORMAT_VERSION:
            raise InputError(f"card format {self.format_version} is newer than this version reads ({FORMAT_VERSION})")
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InputError(f"name must be letters, digits, '.', '_' or '-' (a file name), not {self.name!r}")
        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")

    def _check_inputs(self) -> None:
        if not isinstance(self.inputs, (list, tuple)) or not self.inputs:
            raise InputError(f"inputs must be a non-empty list of channels from {', '.join(CHANNELS)}")
        for name in self.inputs:
            parse_input(name)
        if len(set(self.inputs)) != len(self.inputs):
            raise InputError(f"inputs {list(self.inputs)} must be distinct")
        self.inputs = list(self.inputs)
        in_channels = self.architecture_kwargs.get("in_channels", len(self.inputs))
        if in_channels != len(self.inputs):
            raise InputError(f"architecture_kwargs in_channels={in_channels} but {len(self.inputs)} inputs are listed")

    def _check_weights(self) -> None:
        names, digests = self.weights, self.sha256
        if isinstance(names, list) or isinstance(digests, list):
            if not (isinstance(names, list) and isinstance(digests, list) and len(names) == len(digests) >= 1):
                raise InputError("an ensemble's weights and sha256 must be lists of the same, non-zero length")
            if len(set(names)) != len(names):
                raise InputError(f"the weights files of an ensemble must be distinct, not {names!r}")
        elif not isinstance(names, str) or not isinstance(digests, str):
            raise InputError("weights and sha256 must be text, or lists of text for an ensemble")
        for name, digest in self.members:
            if not isinstance(name, str) or (name and (Path(name).name != name or not name.endswith(WEIGHTS_SUFFIX))):
                raise InputError(f"weights must be a '{WEIGHTS_SUFFIX}' file name beside the card, not {name!r}")
            if not isinstance(digest, str) or (digest and not _SHA256.fullmatch(digest)):
                raise InputError(f"sha256 must be 64 lowercase hexadecimal digits, not {digest!r}")

    @property
    def members(self) -> list[tuple[str, str]]:
        """(weights file, SHA-256) of each network: one pair, or one per network of an ensemble."""
        if isinstance(self.weights, list):
            return list(zip(self.weights, self.sha256))
        return [(self.weights, self.sha256)]

    def build(self) -> nn.Module:
        """A freshly initialised network of this card's architecture, options and input count."""
        options = {key: value for key, value in self.architecture_kwargs.items() if key != "in_channels"}
        return build_model(self.architecture, in_channels=len(self.inputs), **options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike | None = None) -> ModelCard:
        """A validated card from parsed JSON; problems raise :class:`InputError` naming ``source``."""
        if not isinstance(data, dict):
            raise InputError("a model card must be a JSON object", source)
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if unknown:
            raise InputError(f"unknown model card keys: {', '.join(unknown)}", source)
        if missing:
            raise InputError(f"model card lacks keys: {', '.join(missing)}", source)
        try:
            return cls(**data)
        except InputError as error:
            raise InputError(f"invalid model card: {error.problem}", source) from error

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the card to ``path`` atomically; return the path."""
        path = Path(path)
        with atomic_output_file(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ModelCard:
        """Read and validate the card at ``path``."""
        path = Path(path)
        if not path.is_file():
            raise InputError("model card not found", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"model card is not valid JSON: {error}", path) from error
        return cls.from_dict(data, path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(model: nn.Module, card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write ``<name>.safetensors`` and the card ``<name>.json`` (with the file's SHA-256) into ``folder``.

    Both files are staged and checked by loading them back before they are moved into place; a model that
    does not fit its card's architecture is a bug of the caller (ValueError) and leaves nothing behind.
    Return the card's path.
    """
    folder = Path(folder)
    weights_name = f"{card.name}{WEIGHTS_SUFFIX}"
    with atomic_output_dir(folder) as staging:
        weights_path = staging / weights_name
        safetensors.torch.save_model(model, str(weights_path), metadata={"architecture": card.architecture})
        saved = dataclasses.replace(card, weights=weights_name, sha256=sha256_file(weights_path))
        try:
            load_model(saved.to_json(staging / f"{card.name}.json"))
        except InputError as error:
            raise ValueError(f"the model does not match its card {card.name!r}: {error.problem}") from error
    return folder / f"{card.name}.json"


def checked_weights(weights: str, sha256: str, card_path: Path) -> Path:
    """A weights file named by the card at ``card_path``: present beside it and matching its SHA-256."""
    if not weights or not sha256:
        raise InputError("model card names no weights file or SHA-256", card_path)
    weights_path = card_path.parent / weights
    if not weights_path.is_file():
        raise InputError(f"weights file named by {card_path.name} is missing", weights_path)
    digest = sha256_file(weights_path)
    if digest != sha256:
        raise InputError(
            f"SHA-256 of the weights ({digest}) differs from the one in {card_path.name} ({sha256}): "
            "the file is truncated, corrupted or was replaced",
            weights_path,
        )
    return weights_path


def _network(card: ModelCard, card_path: Path, weights_path: Path) -> nn.Module:
    """A network of the card's architecture with the weights of ``weights_path`` (safetensors, no pickle)."""
    try:
        model = card.build()
    except InputError as error:
        raise InputError(error.problem, card_path) from error
    try:
        safetensors.torch.load_model(model, weights_path, strict=True)
    except (SafetensorError, RuntimeError) as error:
        raise InputError(f"weights do not fit architecture {card.architecture!r}: {error}", weights_path) from error
    return model


def load_networks(card_path: str | os.PathLike,
                  device: str | torch.device = "cpu") -> tuple[list[nn.Module], ModelCard]:
    """Every network of a card (one, or the members of an ensemble), each file checked against its SHA-256 before
    any is loaded, in eval mode on ``device``."""
    card_path = Path(card_path)
    card = ModelCard.from_json(card_path)
    paths = [checked_weights(weights, sha256, card_path) for weights, sha256 in card.members]
    return [_network(card, card_path, path).to(device).eval() for path in paths], card


def load_model(card_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """The one network of a card, weights checked and loaded (safetensors, no pickle), in eval mode on ``device``;
    an ensemble card is an :class:`InputError` here (:func:`load_networks` loads it)."""
    networks, card = load_networks(card_path, device)
    if len(networks) != 1:
        raise InputError(f"the card is an ensemble of {len(networks)} networks, where one network is needed",
                         card_path)
    return networks[0], card


def _is_card(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("skipping %s: not readable JSON (%s)", path, error)
        return False
    return isinstance(data, dict) and "format_version" in data and "architecture" in data


def find_cards(folder: str | os.PathLike) -> list[Path]:
    """Model cards directly inside ``folder`` (JSON objects with ``format_version`` and ``architecture``), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("model folder not found", folder)
    return [path for path in sorted(folder.glob("*.json")) if _is_card(path)]
