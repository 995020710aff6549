"""Training configuration: one JSON file says everything a training run does.

Example (every key but ``name``, ``task`` and ``dataset`` has a default)::

    {
      "name": "lesion_unetpp",
      "task": "lesion",
      "dataset": "data/phantom",
      "architecture": "unetpp",
      "approach": "ov",
      "preprocessing": {"spacing_mm": [0.8, 0.8], "subtraction": true},
      "optimisation": {"epochs": 100, "batch_size": 8}
    }

``initial_model`` (a model card) starts the network from that model's weights instead of random ones: fine-tuning a
bundled model on new data; ``initial_member`` picks the network of an ensemble card (default 0, the first). Relative
paths are read from the folder of the configuration file that names them. ``contrast_uptake_range``
(e.g. [0.5, 1.5], with ``augmentation`` on) scales each training sample's contrast uptake by a random factor
(:class:`~..data.augmentation.RandContrastUptaked`).

``extends`` names another configuration file (relative to this one's folder) whose values this one starts from: a
recipe then holds only what it changes, e.g. ``{"extends": "lesion_fine.json", "name": "lesion_fine_first",
"initial_member": 1}``. Nested sections are merged key by key, as :func:`merge_options` merges layers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.augmentation import RandContrastUptaked
from ..data.preprocessing import PreprocessConfig
from ..data.slices import Approach
from ..errors import InputError
from ..evaluation.carbon import CarbonSettings
from .trainer import OptimisationSettings

TASKS = ("breast", "lesion")
#: Keys whose values are paths, read from the folder of the configuration file that names them.
PATH_KEYS = ("dataset", "output_dir", "initial_model")


@dataclass
class PatchSampling:
    """Random in-plane patches of the training slices (faster epochs on a CPU); ``size`` None = whole slices.

    ``foreground_ratio`` is the share of patches centred on the label (lesion or breast); ``enhancing_ratio`` (lesion
    models with a subtraction input) the share centred on the most enhancing tissue that is no lesion, the hard
    negatives (see :func:`~..data.patches.enhancing_classes`); the rest lie anywhere.
    """

    size: tuple[int, int] | None = None
    foreground_ratio: float = 0.5
    enhancing_ratio: float = 0.0

    def __post_init__(self) -> None:
        if min(self.foreground_ratio, self.enhancing_ratio) < 0 or self.foreground_ratio + self.enhancing_ratio > 1:
            raise InputError(f"patches: foreground_ratio and enhancing_ratio must be >= 0 with a sum <= 1, got "
                             f"{self.foreground_ratio} and {self.enhancing_ratio}")


@dataclass
class TrainConfig:
    """A training run: data, model, loss, optimisation, cross-validation and where results go."""

    name: str
    task: str
    dataset: str
    output_dir: str = "runs"
    architecture: str = "unetpp"
    architecture_options: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=lambda: ["pre", "post"])
    loss: str = "hybrid"
    loss_weights: dict[str, float] = field(default_factory=dict)
    approach: str = "ov"
    slices: str = "approach"
    lesion_slice_repeats: int = 1
    lesion_visits: int | None = None
    lesion_weight_mm3: float | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    safe_distance_mm: float = 16.0
    augmentation: float = 0.0
    contrast_uptake_range: tuple[float, float] | None = None
    patches: PatchSampling = field(default_factory=PatchSampling)
    folds: int = 5
    test_patients: int = 2
    run_folds: list[int] | None = None
    optimisation: OptimisationSettings = field(default_factory=OptimisationSettings)
    threshold: float = 0.5
    device: str = "auto"
    carbon: CarbonSettings = field(default_factory=CarbonSettings)
    initial_model: str | None = None
    initial_member: int = 0
    notes: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        try:
            Approach(self.approach)
        except ValueError:
            raise InputError(f"approach must be one of {', '.join(a.value for a in Approach)}, "
                             f"got {self.approach!r}") from None
        if self.slices not in ("approach", "breast"):
            raise InputError(f"slices must be 'approach' (the approach's slices) or 'breast' (every slice with "
                             f"breast), got {self.slices!r}")
        if self.patches.enhancing_ratio and (self.task != "lesion" or "subtraction" not in self.inputs):
            raise InputError("patches.enhancing_ratio needs a lesion model with a 'subtraction' input (strong "
                             "enhancement is read from it)")
        if self.lesion_slice_repeats < 1 or (self.lesion_visits is not None and self.lesion_visits < 1):
            raise InputError(f"lesion_slice_repeats and lesion_visits must be at least 1, got "
                             f"{self.lesion_slice_repeats} and {self.lesion_visits}")
        if self.lesion_weight_mm3 is not None and not (self.task == "lesion" and self.lesion_weight_mm3 > 0):
            raise InputError(f"lesion_weight_mm3 must be a positive volume and is for lesion models, got "
                             f"{self.lesion_weight_mm3} for a {self.task} model")
        if self.initial_member < 0:
            raise InputError(f"initial_member must be 0 or more (a network of the initial_model's card), got "
                             f"{self.initial_member}")
        if self.run_folds is not None and any(not 0 <= k < self.folds for k in self.run_folds):
            raise InputError(f"run_folds {self.run_folds} must be fold numbers from 0 to {self.folds - 1}")
        if self.contrast_uptake_range is not None:
            self.contrast_uptake_range = tuple(float(value) for value in self.contrast_uptake_range)
            RandContrastUptaked(self.inputs, self.contrast_uptake_range)  # raises InputError for a bad range or inputs

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocessing)

    @property
    def fold_numbers(self) -> list[int]:
        return list(range(self.folds)) if self.run_folds is None else list(self.run_folds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_NESTED = {"optimisation": OptimisationSettings, "carbon": CarbonSettings, "patches": PatchSampling}


def _build(cls: type, values: dict, where: str) -> Any:
    """``cls(**values)`` with unknown and missing keys reported by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)} in {where}; known keys: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as error:
        raise InputError(f"{where}: {error}") from None


def config_from_dict(values: dict, base_dir: str | os.PathLike = ".") -> TrainConfig:
    """A :class:`TrainConfig` from parsed JSON; ``dataset`` and ``output_dir`` resolved against ``base_dir``."""
    values = dict(values)
    for key, cls in _NESTED.items():
        if key in values:
            values[key] = _build(cls, dict(values[key]), f"'{key}'")
    if isinstance(values.get("patches"), PatchSampling) and values["patches"].size is not None:
        values["patches"].size = tuple(int(s) for s in values["patches"].size)
    config = _build(TrainConfig, values, "the training configuration")
    base_dir = Path(base_dir)
    config.dataset = str((base_dir / config.dataset).resolve())
    config.output_dir = str((base_dir / config.output_dir).resolve())
    if config.initial_model is not None:
        config.initial_model = str((base_dir / config.initial_model).resolve())
    config.preprocess  # noqa: B018  (validates the preprocessing section now, not after hours of training)
    return config


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path``; a missing file, invalid JSON or another JSON type is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"not valid JSON: {error}", path) from None
    if not isinstance(values, dict):
        raise InputError(f"a {what} is a JSON object", path)
    return values


def merge_options(*layers: Mapping | None) -> dict:
    """Later layers win; nested sections (``optimisation``, ``preprocessing``, ...) are merged key by key."""
    merged: dict = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def _config_values(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """The values of the configuration file ``path`` over those of the file it ``extends`` (and so on), each file's
    relative paths resolved against its own folder."""
    path = path.resolve()
    if path in extended_by:
        chain = " -> ".join(p.name for p in (*extended_by, path))
        raise InputError(f"training configurations extend each other in a circle: {chain}", path)
    values = read_json_object(path, "training configuration")
    for key in PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = str((path.parent / values[key]).resolve())
    parent = values.pop("extends", None)
    if parent is None:
        return values
    if not isinstance(parent, str):
        raise InputError(f"'extends' names one configuration file, got {parent!r}", path)
    try:
        return merge_options(_config_values(path.parent / parent, (*extended_by, path)), values)
    except InputError as error:
        raise InputError(f"{error.problem} (extended by {path.name})", error.path) from None


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and validate a training configuration file (and the files it extends)."""
    path = Path(path)
    values = _config_values(path)
    try:
        return config_from_dict(values, path.parent)
    except InputError as error:
        raise InputError(error.problem, path) from None
