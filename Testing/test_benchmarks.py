"""The accuracy benchmark's per-study lesion scores (benchmarks/ is a folder of scripts, put on the path here)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from accuracy import lesion_scores, summarise_lesions  # noqa: E402


def mask_image(boxes: list[tuple[slice, slice, slice]]) -> sitk.Image:
    array = np.zeros((20, 40, 40), np.uint8)
    for box in boxes:
        array[box] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


FOCUS = (slice(2, 4), slice(5, 9), slice(5, 9))  # 2 x 4 x 4 voxels of 2 mm3: 64 mm3
MASS = (slice(8, 16), slice(20, 32), slice(20, 32))  # 2304 mm3
TINY = (slice(18, 19), slice(30, 32), slice(2, 4))  # 8 mm3: under 20 mm3, counted in no detection share


def test_lesion_scores_count_small_lesions_apart_among_the_large_ones():
    reference = mask_image([FOCUS, MASS, TINY])
    found_mass_only = lesion_scores(mask_image([MASS, (slice(0, 2), slice(30, 34), slice(30, 34))]), reference)
    assert found_mass_only["lesions"] == 3
    assert (found_mass_only["large_lesions"], found_mass_only["large_detected"]) == (2, 1)
    assert (found_mass_only["small_lesions"], found_mass_only["small_detected"]) == (1, 0)
    assert found_mass_only["fp_lesions"] == 1
    found_both = lesion_scores(mask_image([FOCUS, MASS]), reference)
    assert (found_both["small_detected"], found_both["large_detected"], found_both["fp_lesions"]) == (1, 2, 0)
    summary = summarise_lesions([found_mass_only, found_both])
    assert summary["detected_over_20mm3"] == 0.75
    assert summary["detected_20_150mm3"] == 0.5
    assert summary["fp_per_case"] == 0.5


@pytest.mark.parametrize("script", sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")),
                         ids=lambda path: path.name)
def test_benchmark_scripts_import(script, monkeypatch):
    """The benchmarks run for hours and no test runs them whole: at least each must still load against the library."""
    specification = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(specification)
    monkeypatch.setitem(sys.modules, specification.name, module)  # dataclasses look their module up there
    specification.loader.exec_module(module)
