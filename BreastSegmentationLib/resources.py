"""Where the bundled resources (models, sample case) are: a source checkout, a pip install, or Slicer.

The top-level ``Resources/`` folder sits beside the package in a checkout and in Slicer's installed
extension; a pip install puts it under ``<prefix>/share/BreastSegmentation``.
"""

from __future__ import annotations

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
