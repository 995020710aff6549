"""The approaches study of seed 000 end to end on tiny phantoms, its tables and figures, and the map helpers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.data.phantom import PhantomConfig, write_cases
from BreastSegmentationLib.data.slices import Approach
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.reports.maps import OverlayPanel, midline_profile, total_map
from BreastSegmentationLib.training.config import merge_options
from BreastSegmentationLib.training.experiments import approaches_config

TITLES = [approach.title for approach in Approach]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Six small patients, each with at least one lesion; 96 rows so that the OV crop is smaller than WV."""
    folder = tmp_path_factory.mktemp("phantoms") / "cases"
    write_cases(folder, 6, 5, PhantomConfig(lesion_count_range=(1, 3), lesion_diameter_range_mm=(15.0, 40.0)),
                shape=(64, 96, 12))
    return folder


@pytest.fixture(scope="module")
def study(phantoms, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("study") / "approaches"
    code = main(["--progress", "none", "experiment", "approaches", "--dataset", str(phantoms), "--out", str(out),
                 "--quick", "--architecture", "unet_small"])
    assert code == 0
    return out


def test_every_table_lists_the_four_approaches(study):
    for name in ("table2_inputs.csv", "table3_loss.csv", "table4_test.csv", "table5_lesions.csv",
                 "table6_carbon.csv", "table6_folds.csv"):
        assert sorted({row["approach"] for row in read_rows(study / name)}) == sorted(TITLES), name
    markdown = (study / "tables.md").read_text(encoding="utf-8")
    for heading in ("Table 2", "Table 3", "Table 4", "Table 5", "Table 6", "Seed 000 reported"):
        assert heading in markdown
    assert all(title in markdown for title in TITLES)
    folds = read_rows(study / "table3_loss.csv")
    assert sorted((row["approach"], row["fold"]) for row in folds) == sorted((t, k) for t in TITLES for k in "01")


def test_table2_shapes_are_consistent_and_ov_is_smaller_than_wv(study):
    rows = read_rows(study / "table2_shapes.csv")
    assert len(rows) == 6
    for row in rows:
        wv, wv_brs, sls, ov = (json.loads(row[title]) for title in TITLES)
        assert wv == wv_brs == [64, 96, 12]
        assert sls[:2] == wv[:2] and 1 <= sls[2] <= wv[2]
        assert ov[0] == wv[0] and ov[1] < wv[1] and ov[1] % 32 == 0 and ov[2] == sls[2]
        assert int(row["OV with BRS voxels"]) == ov[0] * ov[1] * ov[2]
    inputs = {row["approach"]: row for row in read_rows(study / "table2_inputs.csv")}
    assert json.loads(inputs["OV with BRS"]["network_input_hw"])[0] < json.loads(inputs["WV with BRS"]
                                                                                 ["network_input_hw"])[0]
    assert float(inputs["OV with BRS"]["pixels_vs_wv"]) < float(inputs["SLS with BRS"]["pixels_vs_wv"]) < 1.0
    assert int(inputs["WV without BRS"]["slices"]) == 6 * 12


def test_cfp_is_eq9_of_the_measured_training_time(study):
    folds = read_rows(study / "table6_folds.csv")
    assert len(folds) == 8
    for row in folds:
        seconds = float(row["train_seconds"])
        assert seconds > 0
        assert float(row["cfp_kg"]) == pytest.approx(0.475 * seconds / 3600, rel=1e-9)
        approach = next(a for a in Approach if a.title == row["approach"]).value
        log = read_rows(study / "runs" / approach / f"fold_{row['fold']}" / "log.csv")
        assert seconds == pytest.approx(sum(float(epoch["seconds"]) for epoch in log), abs=0.01)
    summary = read_rows(study / "table6_carbon.csv")
    means = np.array([float(row["cfp_kg_mean"]) for row in summary])
    expected = 1 - (means.max() - means.min()) * means / means.max()
    np.testing.assert_allclose([float(row["normalised_cfp"]) for row in summary], expected)


def test_tables_3_to_5_agree_with_the_fold_logs_and_model_cards(study):
    losses = read_rows(study / "table3_loss.csv")
    tests = {row["approach"]: row for row in read_rows(study / "table4_test.csv")}
    lesions = {row["approach"]: row for row in read_rows(study / "table5_lesions.csv")}
    for approach in Approach:
        dice, fn_totals = [], {}
        for fold in (0, 1):
            folder = study / "runs" / approach.value / f"fold_{fold}"
            best = min(read_rows(folder / "log.csv"), key=lambda epoch: float(epoch["val_loss"]))
            row = next(r for r in losses if r["approach"] == approach.title and r["fold"] == str(fold))
            assert float(row["val_loss"]) == pytest.approx(float(best["val_loss"]))
            assert float(row["train_loss"]) == pytest.approx(float(best["train_loss"]))
            card = json.loads((folder / "model" / f"{approach.value}_fold{fold}.json").read_text())
            dice.append(card["metrics"]["test"]["dice"])
            for volume_bin in card["metrics"]["test"]["lesion_bins"]:
                key = f"FN {volume_bin['label']} mm3"
                fn_totals[key] = fn_totals.get(key, 0) + volume_bin["fn"]
        assert float(tests[approach.title]["dice"]) == pytest.approx(np.mean(dice))
        assert {key: int(lesions[approach.title][key]) for key in fn_totals} == fn_totals


def test_all_approaches_share_the_split_and_the_maps_are_written(study):
    splits = {approach.value: json.loads((study / "runs" / approach.value / "split.json").read_text())
              for approach in Approach}
    assert len({json.dumps(split, sort_keys=True) for split in splits.values()}) == 1
    assert len(splits["ov"]["test_patients"]) == 1
    for name in ("overlay_maps.png", "midline_profiles.png"):
        assert (study / name).read_bytes()[:8] == PNG_MAGIC
    markdown = (study / "tables.md").read_text(encoding="utf-8")
    assert "overlay_maps.png" in markdown and "midline_profiles.png" in markdown
    assert not list(study.glob(".*partial*"))


def test_a_missing_dataset_is_an_input_error_and_writes_nothing(tmp_path):
    out = tmp_path / "study"
    code = main(["--progress", "none", "experiment", "approaches", "--dataset", str(tmp_path / "missing"),
                 "--out", str(out), "--quick"])
    assert code == 2
    assert not out.exists()


def test_options_file_quick_settings_and_command_line_merge(tmp_path):
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"dataset": "data", "optimisation": {"learning_rate": 0.01, "epochs": 50},
                                   "preprocessing": {"subtraction": True}}))
    out = tmp_path / "out"
    code = main(["--progress", "none", "experiment", "approaches", str(options), "--out", str(out), "--quick",
                 "--epochs", "3"])
    assert code == 2  # the dataset folder tmp_path/data does not exist: named relative to the options file
    assert not out.exists()
    config = approaches_config({"dataset": "data", "optimisation": {"learning_rate": 0.01}}, out, quick=True,
                               overrides={"optimisation": {"epochs": 3}}, base_dir=tmp_path)
    assert (config.folds, config.test_patients, config.architecture) == (2, 1, "unetpp_small")
    assert (config.optimisation.epochs, config.optimisation.learning_rate) == (3, 0.01)
    assert config.dataset == str((tmp_path / "data").resolve())
    assert config.output_dir == str(out.resolve() / "runs")
    assert merge_options({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}, None) == {"a": {"x": 1, "y": 3}, "b": 1}


def test_the_study_refuses_a_breast_task_and_no_test_patients(tmp_path):
    with pytest.raises(InputError, match="lesion models"):
        approaches_config({"dataset": "d", "task": "breast", "approach": "wv"}, tmp_path)
    with pytest.raises(InputError, match="test_patients"):
        approaches_config({"dataset": "d", "test_patients": 0}, tmp_path)


def test_total_map_pads_stacks_to_the_largest_slice_and_sums_them():
    first = np.zeros((2, 2, 3), dtype=np.uint8)
    first[0, 0, 0] = first[1, 0, 0] = first[1, 1, 2] = 1
    second = np.ones((1, 3, 2), dtype=np.uint8)
    expected = np.array([[3, 1, 0], [1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(total_map([first, second]), expected)
    panel = OverlayPanel.from_stacks("x", [first], [second])
    assert panel.breast.shape == panel.lesions.shape == (3, 3)


def test_midline_profile_measures_the_breast_depth_at_the_midline():
    breast_map = np.zeros((10, 9), dtype=int)
    breast_map[2:9, 4] = 5  # the midline column (columns 0..8 are covered) reaches from row 2 up to row 8
    breast_map[6:10, 0] = 1
    breast_map[7:9, 8] = 2
    profile = midline_profile(breast_map)
    assert profile.column == 4
    assert profile.h_max_mid == 9 - 2 + 1  # most anterior breast row (9) down to the midline's deepest (2)
    np.testing.assert_array_equal(profile.values, breast_map[:, 4])
    assert midline_profile(np.zeros((4, 4))) is None
