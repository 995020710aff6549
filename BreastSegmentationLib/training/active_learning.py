"""Seed 001's study on any dataset: which patients to annotate first for breast region segmentation (BRS).

Breast Anatomy Geometry (BAG) is measured on each patient's breast-region overlay map: Nearest Point (patient
positioning) and Breast Size (:func:`~BreastSegmentationLib.data.crops.bag_geometry`). A selection strategy picks the
training patients for each training proportion (10-40 % in the paper); every other patient is the test set:

- ``random``: a seeded permutation of the patients, its first N (so a larger proportion keeps the smaller's patients).
- ``nearest_point`` / ``breast_size``: the paper groups patients with similar geometry and trains on a representative
  of each group. Here the patients sorted by the feature are cut into N groups of equal count and the middle
  patient of each group is taken, so the selection spans the feature's whole distribution.
- ``hybrid``: a third of the patients by Nearest Point, a third of the others by Breast Size, the rest at random.
- ``uncertainty`` (the paper's future work; the cycle of its Fig. 1): a random seed set at the first proportion;
  after each round the model predicts the unlabelled pool, and the patients with the highest mean predictive
  entropy of the sigmoid outputs are annotated (added) until the next proportion is reached.

Each selection trains the configured folds of a cross-validation over the selected patients, and every fold model
is tested on all unselected patients: Dice, IoU, precision, recall, HD and HD95 (mm), and the energy and CO2 of its
training (seed 001 Eq. 6, from sampled power when a meter is available, else from time). Output folder::

    runs/<strategy>_p<percent>/fold_k/...   each training (resumable)
    tables.md              BAG summary, the Table 2 analogue, the selections
    table2_strategies.csv  per strategy and proportion: metrics (mean over fold models and test patients), CFP
    bag.csv                Nearest Point and Breast Size of every patient
    selections.csv         the training patients of every strategy and proportion
    cases.csv              every test patient's metrics and entropy, per strategy, proportion and fold model
    bag_histograms.png     seed 001 Fig. 4
    study.json             all of the above
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.crops import bag_geometry
from ..data.preprocessing import PreparedCase
from ..data.slices import task_label
from ..errors import InputError
from ..evaluation.metrics import segmentation_metrics
from ..inference.runtime import resolve_device
from ..io.outputs import atomic_output_dir
from ..models.cards import load_model
from ..progress import Progress, silent
from ..reports.maps import plot_bag_histograms
from ..reports.tables import markdown_table, write_csv, write_json
from .config import TrainConfig, merge_options
from .experiments import mean_and_sd, prepare_study_cases, study_config, train_folds
from .run import make_slice_dataset, predict_case
from .splits import split_patients

STRATEGIES: tuple[str, ...] = ("random", "nearest_point", "breast_size", "hybrid", "uncertainty")
DEFAULT_PROPORTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd", "hd95")

#: Options of a quick smoke run: one fold of two, one epoch, a small U-Net.
QUICK_OPTIONS: dict = {"folds": 2, "run_folds": [0], "architecture": "unet_small",
                       "optimisation": {"epochs": 1, "early_stopping_patience": 1}}

#: Seed 001 Table 2's range over its 16 runs (59 patients, FCN-ResNet50), set beside ours in tables.md.
PAPER_SUMMARY = ("Seed 001 (Stavanger, 59 patients, FCN-ResNet50, 5 folds) reported Dice 0.920-0.961, IoU "
                 "0.859-0.927 and HD 12.5-25.1 px over Random, Nearest Point, Breast Size and Hybrid at 10-40 %.")


@dataclass(frozen=True)
class ActiveLearningSettings:
    """Which strategies to compare and at which training proportions (fractions of the patients)."""

    strategies: tuple[str, ...] = STRATEGIES
    proportions: tuple[float, ...] = DEFAULT_PROPORTIONS

    def __post_init__(self) -> None:
        unknown = [name for name in self.strategies if name not in STRATEGIES]
        if unknown or not self.strategies:
            raise InputError(f"strategies must be among {', '.join(STRATEGIES)}, got {list(self.strategies)}")
        if not self.proportions or any(not 0.0 < p < 1.0 for p in self.proportions):
            raise InputError(f"training proportions must lie between 0 and 1 (exclusive), got {list(self.proportions)}")
        object.__setattr__(self, "strategies", tuple(dict.fromkeys(self.strategies)))
        object.__setattr__(self, "proportions", tuple(sorted(set(float(p) for p in self.proportions))))


# --- Breast Anatomy Geometry -------------------------------------------------------------------------------------

def bag_table(cases: Sequence[PreparedCase]) -> list[dict]:
    """Nearest Point and Breast Size of every patient (the mean over the patient's cases), sorted by patient."""
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        if case.breast is None:
            raise InputError(f"case {case.case_id} has no breast mask: BAG is measured on the breast region")
        by_patient[case.patient_id].append(bag_geometry(case.breast, case.spacing_yx))
    keys = ("nearest_point_px", "breast_size_px", "nearest_point_mm", "breast_size_mm")
    return [{"patient_id": patient, "cases": len(rows), **{key: float(np.mean([row[key] for row in rows]))
                                                           for key in keys}}
            for patient, rows in sorted(by_patient.items())]


# --- selection strategies ----------------------------------------------------------------------------------------

def training_count(n_patients: int, proportion: float, minimum: int = 2) -> int:
    """Patients to train on at ``proportion`` (rounded half up, at least ``minimum``); at least one is left to test."""
    count = max(minimum, math.floor(proportion * n_patients + 0.5))
    if count >= n_patients:
        raise InputError(f"{proportion:.0%} of {n_patients} patients leaves no test patient (at least {count} "
                         f"are trained on); use a smaller proportion or more patients")
    return count


def select_random(patients: Sequence[str], count: int, seed: int) -> list[str]:
    """The first ``count`` of a seeded permutation of the (sorted) patients."""
    ordered = sorted(patients)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[index] for index in order[:count]]


def representatives(values: Mapping[str, float], count: int) -> list[str]:
    """``count`` patients spread over the distribution of ``values``: the patients sorted by value are cut into
    ``count`` groups of equal count and the middle patient of each group is taken (ties by patient id)."""
    if count > len(values):
        raise ValueError(f"cannot pick {count} of {len(values)} patients")
    ordered = sorted(values, key=lambda patient: (values[patient], patient))
    return [ordered[(2 * group + 1) * len(ordered) // (2 * count)] for group in range(count)]


def select_hybrid(bag: Sequence[Mapping], count: int, seed: int) -> list[str]:
    """A third by Nearest Point, a third of the rest by Breast Size, the remainder at random (earlier shares get
    the extra patient when ``count`` is not a multiple of 3)."""
    shares = [count // 3 + (1 if index < count % 3 else 0) for index in range(3)]
    chosen = representatives({row["patient_id"]: row["nearest_point_mm"] for row in bag}, shares[0])
    rest = [row for row in bag if row["patient_id"] not in chosen]
    chosen += representatives({row["patient_id"]: row["breast_size_mm"] for row in rest}, shares[1])
    chosen += select_random([row["patient_id"] for row in bag if row["patient_id"] not in chosen], shares[2], seed)
    return chosen


def select_patients(strategy: str, bag: Sequence[Mapping], count: int, seed: int) -> list[str]:
    """The training patients of a BAG-based or random ``strategy`` (``uncertainty`` needs a model: see
    :func:`most_uncertain`)."""
    if strategy == "random":
        return select_random([row["patient_id"] for row in bag], count, seed)
    if strategy == "nearest_point":
        return representatives({row["patient_id"]: row["nearest_point_mm"] for row in bag}, count)
    if strategy == "breast_size":
        return representatives({row["patient_id"]: row["breast_size_mm"] for row in bag}, count)
    if strategy == "hybrid":
        return select_hybrid(bag, count, seed)
    raise ValueError(f"strategy {strategy!r} does not select from geometry alone")


def mean_entropy(probabilities: np.ndarray) -> float:
    """Mean binary entropy (bits, 0..1) of sigmoid probabilities: 1 where the model says 0.5, 0 where it is sure."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    return float(np.mean(-(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))))


def most_uncertain(scores: Mapping[str, float], count: int) -> list[str]:
    """The ``count`` patients with the highest uncertainty score (ties by patient id)."""
    return sorted(scores, key=lambda patient: (-scores[patient], patient))[:count]


# --- training rounds ---------------------------------------------------------------------------------------------

def active_learning_config(options: Mapping | None, output_dir: str | os.PathLike, quick: bool = False,
                           overrides: Mapping | None = None, base_dir: str | os.PathLike = ".") -> TrainConfig:
    """The study's base configuration: seed 001's FCN-ResNet50 with Dice loss on whole unmasked slices."""
    defaults = {"name": "active_learning", "task": "breast", "approach": "wv", "architecture": "fcn_resnet50",
                "loss": "dice", "test_patients": 0}
    config = study_config(defaults, options, merge_options(QUICK_OPTIONS if quick else None, overrides), output_dir,
                          base_dir)
    if config.task != "breast":
        raise InputError(f"the active-learning study trains breast region models; the options set task "
                         f"{config.task!r}")
    return config


def assess_cases(model: torch.nn.Module, config: TrainConfig, cases: Sequence[PreparedCase],
                 device: torch.device) -> list[dict]:
    """Metrics and mean predictive entropy of ``model`` on every case (one prediction serves both)."""
    rows = []
    for case in cases:
        dataset = make_slice_dataset(config, [case], training=False)
        probabilities = predict_case(model, dataset, case, device)
        predicted = case.grid.image((probabilities > config.threshold).astype(np.uint8))
        reference = case.grid.image((task_label(case, config.task) > 0).astype(np.uint8))
        scores = segmentation_metrics(predicted, reference)
        rows.append({"case_id": case.case_id, "patient_id": case.patient_id,
                     **{key: scores[key] for key in METRICS},
                     "entropy": mean_entropy(probabilities[dataset.slice_numbers[0]])})
    return rows


@dataclass
class Round:
    """One strategy at one proportion: who was trained on, each fold's training, the test rows."""

    strategy: str
    proportion: float
    selected: list[str]
    test_patients: list[str]
    folds: list[dict]
    cases: list[dict]

    def patient_entropy(self) -> dict[str, float]:
        """Mean entropy of each test patient over its cases and the fold models."""
        values: dict[str, list[float]] = defaultdict(list)
        for row in self.cases:
            values[row["patient_id"]].append(row["entropy"])
        return {patient: float(np.mean(entropies)) for patient, entropies in values.items()}

    def summary(self) -> dict:
        return {
            "strategy": self.strategy, "proportion_percent": round(100 * self.proportion, 1),
            "train_patients": len(self.selected), "test_patients": len(self.test_patients),
            **{key: mean_and_sd([row[key] for row in self.cases])[0] for key in METRICS},
            "cfp_kg": mean_and_sd([fold["co2_kg"] for fold in self.folds])[0],
            "train_seconds": mean_and_sd([fold["train_seconds"] for fold in self.folds])[0],
            "energy_method": self.folds[0]["energy_method"],
        }


def train_round(config: TrainConfig, strategy: str, proportion: float, selected: Sequence[str],
                cases: Sequence[PreparedCase], progress: Progress) -> Round:
    """Cross-validate on the selected patients; test every fold model on all the other patients."""
    round_config = dataclasses.replace(config, name=f"{strategy}_p{round(100 * proportion)}")
    split = split_patients(selected, config.folds, 0, config.optimisation.seed)
    chosen = [case for case in cases if case.patient_id in selected]
    pool = [case for case in cases if case.patient_id not in selected]
    device = resolve_device(config.device)
    folds, rows = [], []
    for outcome in train_folds(round_config, split, chosen, [], progress):
        model, _ = load_model(outcome.card_path, device)
        rows += [{"strategy": strategy, "proportion_percent": round(100 * proportion, 1), "fold": outcome.fold, **row}
                 for row in assess_cases(model, round_config, pool, device)]
        folds.append({"fold": outcome.fold, "train_seconds": outcome.result.seconds,
                      "epochs": len(outcome.result.history), "energy_method": outcome.energy["method"],
                      "energy_kwh": outcome.energy["energy_kwh"], "co2_kg": outcome.energy["co2_kg"]})
    return Round(strategy, proportion, sorted(selected), sorted({case.patient_id for case in pool}), folds, rows)


def _rounds_of_strategy(config: TrainConfig, strategy: str, counts: Sequence[int],
                        settings: ActiveLearningSettings, bag: Sequence[Mapping], cases: Sequence[PreparedCase],
                        progress: Progress) -> list[Round]:
    seed = config.optimisation.seed
    rounds: list[Round] = []
    for proportion, count in zip(settings.proportions, counts):
        if strategy != "uncertainty":
            selected = select_patients(strategy, bag, count, seed)
        elif not rounds:
            selected = select_random([row["patient_id"] for row in bag], count, seed)
        else:
            previous = rounds[-1]
            selected = previous.selected + most_uncertain(previous.patient_entropy(), count - len(previous.selected))
        rounds.append(train_round(config, strategy, proportion, selected, cases, progress))
    return rounds


def run_active_learning(config: TrainConfig, output_dir: str | os.PathLike,
                        settings: ActiveLearningSettings = ActiveLearningSettings(),
                        progress: Progress | None = None) -> dict:
    """Every strategy at every proportion; writes the BAG analysis, the Table 2 analogue and the selections."""
    progress = progress or silent()
    minimum = max(2, config.folds)
    cases = prepare_study_cases(config, ("breast",), minimum + 1, progress)
    bag = bag_table(cases)
    counts = [training_count(len(bag), proportion, minimum) for proportion in settings.proportions]
    rounds: list[Round] = []
    for index, strategy in enumerate(settings.strategies):
        progress.update("active learning", index / len(settings.strategies))
        rounds += _rounds_of_strategy(config, strategy, counts, settings, bag, cases, progress)
    progress.update("active learning", 1.0)
    tables = {
        "bag": bag,
        "table2": [item.summary() for item in rounds],
        "selections": [{"strategy": item.strategy, "proportion_percent": round(100 * item.proportion, 1),
                        "patients": item.selected} for item in rounds],
        "cases": [row for item in rounds for row in item.cases],
    }
    _write_report(config, settings, tables, output_dir)
    return {"output_dir": str(Path(output_dir)), "config": config.to_dict(), "tables": tables}


def _markdown(config: TrainConfig, tables: dict) -> str:
    bag = tables["bag"]
    features = (("Nearest Point (px)", "nearest_point_px"), ("Breast Size (px)", "breast_size_px"),
                ("Nearest Point (mm)", "nearest_point_mm"), ("Breast Size (mm)", "breast_size_mm"))
    bag_summary = [{"feature": name, "mean": mean_and_sd([row[key] for row in bag])[0],
                    "sd": mean_and_sd([row[key] for row in bag])[1], "min": min(row[key] for row in bag),
                    "max": max(row[key] for row in bag)} for name, key in features]
    return "\n".join([
        "# Sample selection for breast region segmentation with active learning (seed 001)\n",
        f"Dataset `{config.dataset}`, {len(bag)} patients; {config.architecture} with the {config.loss} loss; "
        f"{len(config.fold_numbers)} of {config.folds} folds over the selected patients; "
        f"{config.optimisation.epochs} epochs at most; seed {config.optimisation.seed}. The patients not selected are "
        "the test set.\n",
        "## Breast Anatomy Geometry\n", markdown_table(bag_summary),
        "\n![bag_histograms.png](bag_histograms.png)\n",
        "\n## Table 2: test metrics per strategy and training proportion\n",
        "Mean over the fold models and test patients; HD and HD95 in mm; CFP in kg CO2 per fold "
        "(0.475 kg/kWh x the measured or time-estimated energy).\n",
        markdown_table(tables["table2"], float_digits=4),
        f"\n{PAPER_SUMMARY}\n",
        "\n## Selected training patients\n", markdown_table(tables["selections"]),
    ])


def _write_report(config: TrainConfig, settings: ActiveLearningSettings, tables: dict,
                  output_dir: str | os.PathLike) -> None:
    """Tables (CSV, Markdown, JSON) and the BAG histograms, staged and moved into ``output_dir`` together."""
    with atomic_output_dir(output_dir) as staging:
        write_csv(tables["table2"], staging / "table2_strategies.csv")
        write_csv(tables["bag"], staging / "bag.csv")
        write_csv(tables["selections"], staging / "selections.csv")
        write_csv(tables["cases"], staging / "cases.csv")
        plot_bag_histograms(tables["bag"], staging / "bag_histograms.png")
        (staging / "tables.md").write_text(_markdown(config, tables), encoding="utf-8")
        write_json({"config": config.to_dict(), "settings": dataclasses.asdict(settings), "tables": tables},
                   staging / "study.json")
