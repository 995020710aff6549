"""Where the bundled resources (models, sample case) are: a source checkout, a pip install, or Slicer.

The top-level ``Resources/`` folder sits beside the package in a checkout and in Slicer's installed
extension; a pip install puts it under ``<prefix>/share/BreastSegmentation``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import InputError

_ROOTS = (
    Path(__file__).resolve().parents[1] / "Resources",
    Path(sys.prefix) / "share" / "BreastSegmentation",
)


def resource_dir(name: str) -> Path:
    """The bundled folder ``name`` (``Models`` or ``Sample``); a clear error when the install lacks it."""
    for root in _ROOTS:
        if (root / name).is_dir():
            return root / name
    raise InputError(f"the bundled {name} folder was not found (looked in "
                     + ", ".join(str(root / name) for root in _ROOTS) + ")")


def bundled_models_dir() -> Path:
    return resource_dir("Models")


def sample_dir() -> Path:
    return resource_dir("Sample")


def bundled_lesion_threshold() -> float:
    """The bundled lesion model card's threshold, read as plain JSON: the Slicer module shows it as its default
    before torch, which loading a model needs, may be installed."""
    models = bundled_models_dir()
    for card_path in sorted(models.glob("*.json")):
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if isinstance(card, dict) and card.get("task") == "lesion":
            return float(card["threshold"])
    raise InputError("no lesion model card among the bundled models", models)
