"""The package's public API: every advertised name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import BreastSegmentationLib


@pytest.mark.parametrize("name", BreastSegmentationLib.__all__)
def test_every_public_name_resolves(name):
    assert getattr(BreastSegmentationLib, name) is not None


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError):
        BreastSegmentationLib.no_such_function  # noqa: B018


def test_importing_the_package_loads_neither_torch_nor_slicer():
    code = "import sys, BreastSegmentationLib; print(sorted(m for m in ('torch', 'monai', 'slicer', 'vtk', 'qt') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
