"""Active learning of seed 001: BAG on crafted masks, selection strategies, entropy, a quick cycle end to end."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.data.phantom import write_cases
from BreastSegmentationLib.data.preprocessing import Grid, PreparedCase
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.training.active_learning import (
    STRATEGIES,
    ActiveLearningSettings,
    bag_table,
    mean_entropy,
    most_uncertain,
    representatives,
    select_hybrid,
    select_patients,
    select_random,
    training_count,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def crafted_case(case_id: str, patient_id: str, breast: np.ndarray, row_spacing: float) -> PreparedCase:
    n_slices, n_rows, n_cols = breast.shape
    grid = Grid((n_cols, n_rows, n_slices), (0.5, row_spacing, 3.0), (0.0, 0.0, 0.0), IDENTITY)
    return PreparedCase(case_id, patient_id, np.zeros((2, *breast.shape), np.float32), ("pre", "post"), grid,
                        breast=breast.astype(np.uint8))


def bag_rows(nearest: dict[str, float], size: dict[str, float]) -> list[dict]:
    return [{"patient_id": p, "nearest_point_mm": nearest[p], "breast_size_mm": size[p]} for p in sorted(nearest)]


def test_bag_of_crafted_masks_matches_hand_computed_values():
    first = np.zeros((3, 20, 8), bool)
    first[1, 5:13, 2:6] = True  # rows 5..12
    first[2, 3:10, 3:5] = True  # rows 3..9: the overlay map covers rows 3..12
    second = np.zeros((2, 20, 8), bool)
    second[0, 10:18, 1:7] = True  # rows 10..17
    third = np.zeros((2, 20, 8), bool)
    third[1, 0:20, 4] = True  # the whole height: the breast touches the anterior edge
    rows = bag_table([crafted_case("a1", "A", first, 2.0), crafted_case("a2", "A", second, 2.0),
                      crafted_case("b1", "B", third, 1.5)])
    by_patient = {row["patient_id"]: row for row in rows}
    # A: case a1 -> nearest 19 - 12 = 7, size 12 - 3 + 1 = 10; case a2 -> nearest 19 - 17 = 2, size 8; means
    assert by_patient["A"]["cases"] == 2
    assert by_patient["A"]["nearest_point_px"] == pytest.approx(4.5)
    assert by_patient["A"]["breast_size_px"] == pytest.approx(9.0)
    assert by_patient["A"]["nearest_point_mm"] == pytest.approx(9.0)
    assert by_patient["A"]["breast_size_mm"] == pytest.approx(18.0)
    assert (by_patient["B"]["nearest_point_px"], by_patient["B"]["breast_size_px"]) == (0.0, 20.0)
    assert by_patient["B"]["breast_size_mm"] == pytest.approx(30.0)


def test_bag_refuses_a_case_without_breast_mask():
    case = crafted_case("a", "A", np.ones((1, 4, 4)), 1.0)
    case.breast = None
    with pytest.raises(InputError, match="no breast mask"):
        bag_table([case])


@pytest.mark.parametrize(("patients", "proportion", "expected"),
                         [(10, 0.1, 2), (10, 0.25, 3), (59, 0.1, 6), (59, 0.3, 18), (59, 0.4, 24)])
def test_training_count_rounds_half_up_with_a_minimum(patients, proportion, expected):
    assert training_count(patients, proportion) == expected


def test_training_count_keeps_at_least_one_test_patient():
    with pytest.raises(InputError, match="no test patient"):
        training_count(5, 0.9)


def test_random_selection_is_seeded_and_nested():
    patients = [f"p{i:02d}" for i in range(20)]
    four = select_random(patients, 4, seed=3)
    assert four == select_random(list(reversed(patients)), 4, seed=3)
    assert select_random(patients, 7, seed=3)[:4] == four
    assert len(set(four)) == 4
    assert select_random(patients, 4, seed=4) != four


def test_representatives_take_the_middle_patient_of_equal_groups_sorted_by_value():
    values = {name: value for name, value in zip("qwertyuiop", range(10))}  # names out of alphabetical order
    ordered = sorted(values, key=values.get)
    assert representatives(values, 2) == [ordered[2], ordered[7]]
    assert representatives(values, 5) == [ordered[i] for i in (1, 3, 5, 7, 9)]
    assert representatives(values, 1) == [ordered[5]]
    assert representatives({"b": 1.0, "a": 1.0, "c": 0.0}, 3) == ["c", "a", "b"]


def test_nearest_point_and_breast_size_order_patients_by_their_feature():
    nearest = {"p1": 30.0, "p2": 5.0, "p3": 20.0, "p4": 10.0, "p5": 0.0, "p6": 25.0}
    size = {"p1": 100.0, "p2": 140.0, "p3": 90.0, "p4": 120.0, "p5": 130.0, "p6": 110.0}
    bag = bag_rows(nearest, size)
    # by Nearest Point: p5 p2 p4 p3 p6 p1 -> groups (p5 p2 p4) (p3 p6 p1), middles p2 and p6
    assert select_patients("nearest_point", bag, 2, seed=0) == ["p2", "p6"]
    # by Breast Size: p3 p1 p6 p4 p5 p2 -> groups (p3 p1 p6) (p4 p5 p2), middles p1 and p5
    assert select_patients("breast_size", bag, 2, seed=0) == ["p1", "p5"]
    # three of six: groups of two, the middle index (2g + 1) * 6 // 6 = 1, 3, 5
    assert select_patients("nearest_point", bag, 3, seed=0) == ["p2", "p3", "p1"]


def test_hybrid_takes_shares_of_nearest_point_breast_size_and_random():
    nearest = {f"p{i}": float(i) for i in range(9)}
    size = {f"p{i}": float((i * 5) % 9) for i in range(9)}
    bag = bag_rows(nearest, size)
    chosen = select_hybrid(bag, 5, seed=1)
    assert chosen[:2] == representatives(nearest, 2)
    rest = {p: v for p, v in size.items() if p not in chosen[:2]}
    assert chosen[2:4] == representatives(rest, 2)
    assert len(set(chosen)) == 5 and chosen == select_hybrid(bag, 5, seed=1)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "uncertainty"])
def test_every_geometry_strategy_selects_the_right_count_deterministically(strategy):
    rng = np.random.default_rng(7)
    bag = bag_rows({f"p{i}": float(v) for i, v in enumerate(rng.normal(20, 5, 12))},
                   {f"p{i}": float(v) for i, v in enumerate(rng.normal(120, 15, 12))})
    for count in (2, 4, 7):
        chosen = select_patients(strategy, bag, count, seed=11)
        assert len(chosen) == len(set(chosen)) == count
        assert set(chosen) <= {row["patient_id"] for row in bag}
        assert chosen == select_patients(strategy, bag, count, seed=11)


def test_entropy_ranks_patients_by_the_uncertainty_of_known_probabilities():
    probabilities = {
        "sure_background": np.full((2, 4, 4), 0.01),
        "coin_flip": np.full((2, 4, 4), 0.5),
        "fairly_sure": np.full((2, 4, 4), 0.9),
        "half_unsure": np.concatenate([np.full((1, 4, 4), 0.5), np.zeros((1, 4, 4))]),
    }
    scores = {patient: mean_entropy(p) for patient, p in probabilities.items()}
    assert scores["coin_flip"] == pytest.approx(1.0)
    assert scores["half_unsure"] == pytest.approx(0.5, abs=1e-5)
    assert scores["fairly_sure"] == pytest.approx(0.4690, abs=1e-4)  # H(0.9) in bits
    assert scores["sure_background"] == pytest.approx(0.0808, abs=1e-4)
    assert most_uncertain(scores, 2) == ["coin_flip", "half_unsure"]
    assert most_uncertain(scores, 3) == ["coin_flip", "half_unsure", "fairly_sure"]


def test_settings_are_checked():
    with pytest.raises(InputError, match="strategies"):
        ActiveLearningSettings(strategies=("random", "clever"))
    with pytest.raises(InputError, match="proportions"):
        ActiveLearningSettings(proportions=(0.2, 1.0))
    assert ActiveLearningSettings(proportions=(0.3, 0.1, 0.3)).proportions == (0.1, 0.3)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms") / "cases"
    write_cases(folder, 6, 11, shape=(64, 64, 8))
    return folder


@pytest.fixture(scope="module")
def cycle(phantoms, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("cycle") / "active_learning"
    code = main(["--progress", "none", "experiment", "active-learning", "--dataset", str(phantoms), "--out", str(out),
                 "--quick", "--proportions", "30", "50"])
    assert code == 0
    return out


def test_quick_cycle_writes_the_table2_analogue(cycle):
    rows = read_rows(cycle / "table2_strategies.csv")
    assert [(row["strategy"], float(row["proportion_percent"])) for row in rows] == [
        (strategy, percent) for strategy in STRATEGIES for percent in (30.0, 50.0)]
    for row in rows:
        assert (int(row["train_patients"]), int(row["test_patients"])) == ((2, 4) if row["proportion_percent"] ==
                                                                            "30.0" else (3, 3))
        assert 0.0 <= float(row["dice"]) <= 1.0
        assert row["hd"] == row["hd95"] == "" or float(row["hd"]) >= float(row["hd95"]) > 0  # mm; empty: no mask
        assert float(row["cfp_kg"]) > 0
    assert len(read_rows(cycle / "bag.csv")) == 6
    assert (cycle / "bag_histograms.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (cycle / "tables.md").read_text(encoding="utf-8")
    assert "Table 2" in markdown and "Breast Anatomy Geometry" in markdown


def test_cycle_selections_follow_the_strategies(cycle):
    selections = {(row["strategy"], row["proportion_percent"]): json.loads(row["patients"])
                  for row in read_rows(cycle / "selections.csv")}
    bag = read_rows(cycle / "bag.csv")
    nearest = {row["patient_id"]: float(row["nearest_point_mm"]) for row in bag}
    assert selections[("nearest_point", "30.0")] == sorted(representatives(nearest, 2))
    assert set(selections[("random", "30.0")]) <= set(selections[("random", "50.0")])
    assert selections[("uncertainty", "30.0")] == selections[("random", "30.0")]
    # the uncertainty round adds the pool patient whose predictions had the highest mean entropy
    entropies = defaultdict(list)
    for row in read_rows(cycle / "cases.csv"):
        if row["strategy"] == "uncertainty" and row["proportion_percent"] == "30.0":
            entropies[row["patient_id"]].append(float(row["entropy"]))
    scores = {patient: float(np.mean(values)) for patient, values in entropies.items()}
    added = sorted(set(selections[("uncertainty", "50.0")]) - set(selections[("uncertainty", "30.0")]))
    assert added == most_uncertain(scores, 1)


def test_a_proportion_leaving_no_test_patient_is_an_input_error(phantoms, tmp_path, one_thread):
    out = tmp_path / "al"
    code = main(["--progress", "none", "experiment", "active-learning", "--dataset", str(phantoms), "--out", str(out),
                 "--quick", "--proportions", "95"])
    assert code == 2
    assert not out.exists()
