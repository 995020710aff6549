"""The accuracy benchmark's per-study lesion scores (benchmarks/ is a folder of scripts, put on the path here)."""

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from accuracy import (  # noqa: E402
    RAYLEIGH_MEDIAN,
    as_acquired,
    heart_in_breast_mm3,
    lesion_intervals,
    lesion_scores,
    main,
    paired_differences,
    on_grid,
    summarise_lesions,
    with_noise,
)
from false_positives import false_positive_rows, tally  # noqa: E402
from missed_lesions import blob_rank_tally, reference_rows  # noqa: E402
from missed_lesions import tally as tally_missed  # noqa: E402

from BreastSegmentationLib.data.phantom_anatomy import Tissue  # noqa: E402


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


def test_sagittal_acquisition_covers_the_study_and_its_labels_come_back_to_the_study_grid():
    study = mask_image([MASS])
    study.SetOrigin((-20.0, 10.0, -30.0))
    pre, post = as_acquired(sitk.Cast(study, sitk.sitkFloat32) * 100.0, sitk.Cast(study, sitk.sitkFloat32) * 300.0,
                            sagittal_mm=2.5)
    assert pre.GetSpacing() == pytest.approx((0.8, 0.8, 2.5)) and post.GetSize() == pre.GetSize()
    slice_axis = np.array(pre.GetDirection()).reshape(3, 3)[:, 2]
    assert slice_axis == pytest.approx((1.0, 0.0, 0.0))  # slices step from the patient's right to left (LPS +x)
    ends = [study.TransformIndexToPhysicalPoint([e * (n - 1) for e, n in zip(ends, study.GetSize())])
            for ends in np.ndindex(2, 2, 2)]
    for corner in ends:
        index = np.array(pre.TransformPhysicalPointToContinuousIndex(corner))
        assert np.all(index >= -1e-6) and np.all(index <= np.array(pre.GetSize()) - 1 + 1e-6)
    assert float(sitk.GetArrayViewFromImage(post).max()) == pytest.approx(300.0)
    back = on_grid(sitk.Cast(pre > 50.0, sitk.sitkUInt8), study)
    assert back.GetSize() == study.GetSize()
    assert lesion_scores(back, study)["lesion_dice"] > 0.9
    assert on_grid(study, study) is study


def test_tilted_acquisition_turns_the_axes_about_left_right_and_covers_the_study():
    study = mask_image([MASS])
    study.SetOrigin((-20.0, 10.0, -30.0))
    pre, post = as_acquired(sitk.Cast(study, sitk.sitkFloat32) * 100.0, sitk.Cast(study, sitk.sitkFloat32) * 300.0,
                            tilt_degrees=20.0)
    assert pre.GetSpacing() == study.GetSpacing() and post.GetSize() == pre.GetSize()
    axes = np.array(pre.GetDirection()).reshape(3, 3)
    assert axes[:, 0] == pytest.approx((1.0, 0.0, 0.0))  # rows still run from the patient's right to left
    assert np.degrees(np.arccos(axes[:, 2] @ (0.0, 0.0, 1.0))) == pytest.approx(20.0)  # slices 20 degrees off axial
    for ends in np.ndindex(2, 2, 2):
        corner = study.TransformIndexToPhysicalPoint([e * (n - 1) for e, n in zip(ends, study.GetSize())])
        index = np.array(pre.TransformPhysicalPointToContinuousIndex(corner))
        assert np.all(index >= -1e-6) and np.all(index <= np.array(pre.GetSize()) - 1 + 1e-6)
    assert lesion_scores(on_grid(sitk.Cast(pre > 50.0, sitk.sitkUInt8), study), study)["lesion_dice"] > 0.9


def test_resliced_acquisition_keeps_the_rows_columns_and_extent_with_thinner_slices():
    study = mask_image([MASS])
    pre, post = as_acquired(sitk.Cast(study, sitk.sitkFloat32) * 100.0, sitk.Cast(study, sitk.sitkFloat32) * 300.0,
                            reslice_mm=0.8)
    assert pre.GetSize() == (40, 40, 48) and post.GetSize() == pre.GetSize()  # 19 steps of 2 mm: 47 of 0.8 mm
    assert pre.GetSpacing() == pytest.approx((1.0, 1.0, 0.8))
    assert pre.GetOrigin() == study.GetOrigin() and pre.GetDirection() == study.GetDirection()
    assert lesion_scores(on_grid(sitk.Cast(pre > 50.0, sitk.sitkUInt8), study), study)["lesion_dice"] > 0.95


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


def study_row(dice: float, lesions: int, found: int, false_positives: int) -> dict:
    return {"lesion_dice": dice, "lesions": lesions, "large_lesions": lesions, "large_detected": found,
            "small_lesions": 0, "small_detected": 0, "fp_lesions": false_positives}


def test_lesion_intervals_resample_whole_studies_and_bracket_the_figures():
    all_found, none_found = study_row(0.9, 2, 2, 0), study_row(0.0, 2, 0, 3)
    intervals = lesion_intervals([all_found, none_found])
    # A resample holds either study twice or both: the share found is 1, 0 or 0.5, never another value.
    assert intervals["detected_over_20mm3"] == [0.0, 1.0]
    assert intervals["fp_per_case"] == [0.0, 3.0]
    rng = np.random.default_rng(3)
    rows = [study_row(float(rng.uniform(0.5, 1.0)), 3, int(rng.integers(1, 4)), int(rng.integers(0, 3)))
            for _ in range(30)]
    summary, intervals = summarise_lesions(rows), lesion_intervals(rows)
    for measure, (low, high) in intervals.items():
        assert low < summary[measure] < high
    doubled = lesion_intervals(rows * 4)  # four times the studies alike: a narrower interval
    for measure, (low, high) in doubled.items():
        assert high - low < intervals[measure][1] - intervals[measure][0]
    assert lesion_intervals([study_row(0.8, 1, 1, 0)]) == {
        "lesion_dice": None, "detected_over_20mm3": None, "fp_per_case": None}


def test_pool_prints_the_figures_of_several_runs_together(tmp_path, capsys):
    runs = [[study_row(0.8, 2, 2, 0)], [study_row(0.6, 2, 1, 1), study_row(0.7, 1, 1, 2)]]
    for index, rows in enumerate(runs):
        cases = [{**row, "breast_dice": 0.96, "heart_mm3": 0.0} for row in rows]
        (tmp_path / f"run{index}.json").write_text(json.dumps({"cases": cases}))
    assert main(["--pool", str(tmp_path / "run0.json"), str(tmp_path / "run1.json")]) == 0
    table = capsys.readouterr().out
    assert "| cases | 3 |" in table
    assert "| detected_over_20mm3 | 0.800 | 0.500 to 1.000 | 0.900 |" in table  # 4 of 5 found


def test_paired_differences_compare_the_same_studies_and_cancel_what_they_share():
    rng = np.random.default_rng(5)
    before = [{**study_row(float(rng.uniform(0.2, 1.0)), 2, int(rng.integers(0, 3)), int(rng.integers(0, 3))),
               "seed": seed} for seed in range(40)]
    # The same studies, each found lesion's Dice a little higher: hard studies stay hard.
    after = [{**row, "lesion_dice": row["lesion_dice"] + 0.02} for row in before[::-1]]
    dice, found, false_positives = paired_differences(before, after + [{**before[0], "seed": 99}])
    assert dice["studies"] == 40 and dice["difference"] == pytest.approx(0.02)
    assert dice["95 % interval"] == "0.020 to 0.020"  # paired: study-to-study spread cancels
    assert found["difference"] == 0.0 and false_positives["difference"] == 0.0
    one_more = [{**row, "large_detected": row["large_detected"] + (row["seed"] == 3)} for row in before]
    found = paired_differences(before, one_more)[1]
    assert found["difference"] == pytest.approx(1 / 80)
    low, high = (float(value) for value in found["95 % interval"].split(" to "))
    assert low == 0.0 < found["difference"] < high  # one lesion more in one study: no difference from chance
    with pytest.raises(SystemExit, match="share no study"):
        paired_differences(before, [{**before[0], "seed": 99}])


def test_breast_on_the_heart_muscle_is_measured_in_mm3():
    tissue = sitk.Cast(mask_image([MASS]) * int(Tissue.MYOCARDIUM), sitk.sitkUInt8)
    assert heart_in_breast_mm3(mask_image([FOCUS]), tissue) == 0.0
    reaching = mask_image([FOCUS, (slice(14, 20), slice(28, 40), slice(0, 40))])  # 2 x 4 x 12 voxels on the MASS
    assert heart_in_breast_mm3(reaching, tissue) == pytest.approx(2 * 4 * 12 * 2.0)


def test_noise_is_raised_by_the_factor_in_each_phases_pixel_type():
    rng = np.random.default_rng(1)
    air = mask_image([(slice(0, 20), slice(0, 40), slice(0, 20))])  # the left half of every slice
    signal = np.where(sitk.GetArrayViewFromImage(air) > 0, 0.0, 400.0)
    sigma = 10.0
    phases = []
    for pixel in (sitk.sitkInt16, sitk.sitkFloat32):
        magnitude = np.hypot(signal + rng.normal(0.0, sigma, signal.shape), rng.normal(0.0, sigma, signal.shape))
        phase = sitk.Cast(sitk.GetImageFromArray(np.rint(magnitude)), pixel)
        phase.CopyInformation(air)
        phases.append(phase)
    noisier = with_noise(tuple(phases), air, 2.0)
    for before, after in zip(phases, noisier):
        values = sitk.GetArrayViewFromImage(after)
        assert after.GetPixelID() == before.GetPixelID() and after.GetSpacing() == before.GetSpacing()
        assert np.median(values[:, :, :20]) / RAYLEIGH_MEDIAN == pytest.approx(2.0 * sigma, rel=0.05)
        assert values[:, :, 20:].std() == pytest.approx(2.0 * sigma, rel=0.05)
        assert values[:, :, 20:].mean() == pytest.approx(400.0, abs=2.0)
    assert with_noise(tuple(phases), air, 1.0) == tuple(phases)


def test_false_positives_are_named_by_the_tissue_under_most_of_them():
    reference = mask_image([MASS])
    node = (slice(0, 2), slice(30, 34), slice(30, 34))
    tissue_array = np.full((20, 40, 40), Tissue.FAT, np.uint8)
    tissue_array[0:2, 30:34, 30:33] = Tissue.LYMPH_NODE  # 3 of the false positive's 4 columns
    tissue_array[MASS] = Tissue.GLAND
    tissue = sitk.GetImageFromArray(tissue_array)
    tissue.CopyInformation(reference)
    probability = sitk.Cast(mask_image([MASS, node]), sitk.sitkFloat32) * 0.8
    rows = false_positive_rows(mask_image([MASS, node]), probability, reference, tissue)
    assert rows == [{"tissue": "lymph_node", "volume_mm3": 64.0, "peak_probability": 0.8}]
    by_tissue, by_bpe = tally([{**rows[0], "bpe": "mild"}], Counter({"mild": 2, "marked": 1}))
    assert by_tissue == [{"tissue": "lymph_node", "false_positives": 1}]
    assert by_bpe == [{"bpe": "marked", "studies": 1, "false_positives": 0, "per_study": 0.0},
                      {"bpe": "mild", "studies": 2, "false_positives": 1, "per_study": 0.5}]


def test_missed_lesions_are_described_by_what_the_phantom_drew():
    reference = mask_image([FOCUS, MASS, TINY])
    probability = sitk.Cast(mask_image([MASS]), sitk.sitkFloat32) * 0.9
    probability[6, 6, 3] = 0.3  # (x, y, z): inside the focus
    drawn = [{"type": "irregular", "diameter_mm": 14.0, "conspicuity": 1.2, "centre_index": [25, 25, 12]},
             {"type": "round", "diameter_mm": 4.0, "conspicuity": 0.4, "centre_index": [6, 6, 3]}]
    rows = reference_rows(mask_image([MASS]), probability, reference, drawn)  # the tiny lesion is not listed
    assert sorted(rows, key=lambda row: row["volume_mm3"]) == [
        {"type": "round", "diameter_mm": 4.0, "conspicuity": 0.4, "volume_mm3": 64.0, "peak_probability": 0.3,
         "found": False},
        {"type": "irregular", "diameter_mm": 14.0, "conspicuity": 1.2, "volume_mm3": 2304.0, "peak_probability": 0.9,
         "found": True}]
    assert tally_missed(rows) == [{"type": "round", "size": "20-150 mm3", "lesions": 1, "missed": 1},
                                  {"type": "irregular", "size": "over 150 mm3", "lesions": 1, "missed": 0}]
    focus, mass = sorted(rows, key=lambda row: row["volume_mm3"])
    studies = [{**focus, "fat_sat": False}, {**focus, "fat_sat": True}, {**mass, "fat_sat": True}]
    assert tally_missed(studies, by="fat_sat") == [
        {"fat_sat": False, "size": "20-150 mm3", "lesions": 1, "missed": 1},
        {"fat_sat": True, "size": "20-150 mm3", "lesions": 1, "missed": 1},
        {"fat_sat": True, "size": "over 150 mm3", "lesions": 1, "missed": 0}]


def blobs_image(amplitudes_and_centres: list[tuple[float, tuple[int, int, int]]]) -> sitk.Image:
    """A subtraction of faint noise with Gaussian blobs (sigma 1.5 voxels) of the given heights at (z, y, x)."""
    grid = np.indices((40, 64, 64)).transpose(1, 2, 3, 0)
    array = np.random.default_rng(3).normal(0.0, 1.0, grid.shape[:3])
    for amplitude, centre in amplitudes_and_centres:
        array += amplitude * np.exp(-((grid - centre) ** 2).sum(-1) / (2 * 1.5 ** 2))
    return sitk.GetImageFromArray(array.astype(np.float32))


def test_a_lesion_is_ranked_among_the_blobs_of_the_breast_that_are_no_lesion():
    lesion_centre = (20, 32, 32)
    others = [(60.0, (10, 12, 12)), (150.0, (30, 50, 12)), (200.0, (10, 50, 50))]
    subtraction = blobs_image([(100.0, lesion_centre), *others])
    breast = sitk.GetImageFromArray(np.ones((40, 64, 64), np.uint8))
    reference_array = np.zeros((40, 64, 64), np.uint8)
    reference_array[18:23, 30:35, 30:35] = 1  # 125 mm3 around the 100-high blob
    reference = sitk.GetImageFromArray(reference_array)
    probability = sitk.Cast(reference, sitk.sitkFloat32) * 0.2
    drawn = [{"type": "round", "diameter_mm": 5.0, "conspicuity": 0.5, "centre_index": [32, 32, 20]}]
    (row,) = reference_rows(reference * 0, probability, reference, drawn, subtraction, breast)
    assert row["found"] is False and row["false_peaks_as_high"] == 2  # the 150- and 200-high blobs, not the 60
    assert row["blob_score"] > 10.0
    (brighter,) = reference_rows(reference, probability, reference, drawn,
                                 blobs_image([(300.0, lesion_centre), *others]), breast)
    assert brighter["found"] is True and brighter["false_peaks_as_high"] == 0
    assert blob_rank_tally([row, brighter, {**row, "false_peaks_as_high": 6}]) == [
        {"size": "20-150 mm3", "found": False, "lesions": 2, "median_false_peaks_as_high": 4.0},
        {"size": "20-150 mm3", "found": True, "lesions": 1, "median_false_peaks_as_high": 0.0}]


@pytest.mark.parametrize("script", sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")),
                         ids=lambda path: path.name)
def test_benchmark_scripts_import(script, monkeypatch):
    """The benchmarks run for hours and no test runs them whole: at least each must still load against the library."""
    specification = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(specification)
    monkeypatch.setitem(sys.modules, specification.name, module)  # dataclasses look their module up there
    specification.loader.exec_module(module)
