"""Seed 000's study on any dataset: one lesion model trained on WV without BRS, WV with BRS, SLS and OV.

Every approach is one :class:`TrainConfig` that differs only in ``approach``; all share the cases (read and prepared
once), the patient split and the seed. The study writes, into its output folder::

    runs/<approach>/fold_k/...     each approach's training, as 'breastseg train' lays it out (resumable)
    tables.md                      Tables 2-6 analogues beside the values seed 000 reported
    table2_shapes.csv              input shape (x, y, z) of every patient per approach
    table2_inputs.csv              per approach: network input, slices and pixels per patient, H_max|mid
    table3_loss.csv                training and validation loss of every fold (at its best epoch)
    table4_test.csv                test Dice, IoU, precision, recall, HD95 (mean over the fold models)
    table5_lesions.csv             FP and FN lesions by volume bin (summed over the fold models)
    table6_carbon.csv              training time, CFP (Eq. 9) and normalised CFP (Eq. 10) per approach
    table6_folds.csv               training time, CFP and measured energy of every fold
    overlay_maps.png               Fig. 6: breast-region and lesion overlay maps with lesion histograms
    midline_profiles.png           Fig. 7: breast-region map along the body midline
    study.json                     all of the above as numbers, with the configuration and the split

The report files are staged and moved into place together (atomic); the training folders are written as training
goes, so that an interrupted study resumes from the last finished epoch when started again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.crops import table2_shapes, uniform_ov_boxes
from ..data.datasets import load_dataset
from ..data.preprocessing import PreparedCase, prepare_checked, select_channels
from ..data.slices import Approach, pad_to
from ..errors import InputError
from ..evaluation.carbon import cfp_from_time, normalised_cfp
from ..inference.runtime import resolve_device
from ..io.outputs import atomic_output_dir
from ..progress import Progress, silent
from ..reports.maps import OverlayPanel, midline_profile, plot_midline_profiles, plot_overlay_maps
from ..reports.tables import markdown_table, write_csv, write_json
from .config import TrainConfig, config_from_dict, merge_options, read_json_object
from .distributed import DistributedContext
from .run import FoldOutcome, initial_weights, make_slice_dataset, train_fold
from .splits import Split, split_patients

APPROACHES: tuple[str, ...] = tuple(approach.value for approach in Approach)

#: Options of a quick smoke run (tiny epochs and folds); the dataset should be small too (e.g. 64 x 64 x 16 phantoms).
QUICK_OPTIONS: dict = {"folds": 2, "test_patients": 1, "architecture": "unetpp_small",
                       "optimisation": {"epochs": 2, "early_stopping_patience": 2}}

#: What seed 000 reported (Tables 3-6), set beside ours in tables.md.
PAPER_RESULTS: dict[str, dict] = {
    "wv": {"train_loss": "0.0962 ± 0.0012", "val_loss": "0.0945 ± 0.0020", "dice": 0.414, "iou": 0.328,
           "precision": 0.586, "recall": 0.354, "fp": (20, 5, 35), "fn": (0, 2, 5), "minutes": "75 ± 21",
           "cfp_kg": "0.59 ± 0.17", "last_epochs": "30 ± 9"},
    "wv_brs": {"train_loss": "0.0948 ± 0.0003", "val_loss": "0.0924 ± 0.0014", "dice": 0.423, "iou": 0.336,
               "precision": 0.461, "recall": 0.482, "fp": (39, 12, 45), "fn": (0, 1, 0), "minutes": "68 ± 13",
               "cfp_kg": "0.54 ± 0.10", "last_epochs": "27 ± 5"},
    "sls": {"train_loss": "0.0462 ± 0.0041", "val_loss": "0.0442 ± 0.0034", "dice": 0.542, "iou": 0.447,
            "precision": 0.542, "recall": 0.605, "fp": (25, 11, 46), "fn": (1, 1, 2), "minutes": "25 ± 12",
            "cfp_kg": "0.20 ± 0.10", "last_epochs": "29 ± 14"},
    "ov": {"train_loss": "0.0339 ± 0.0062", "val_loss": "0.0389 ± 0.0057", "dice": 0.640, "iou": 0.539,
           "precision": 0.705, "recall": 0.640, "fp": (11, 9, 35), "fn": (1, 2, 1), "minutes": "16 ± 4",
           "cfp_kg": "0.13 ± 0.03", "last_epochs": "24 ± 7"},
}

TEST_METRICS = ("dice", "iou", "precision", "recall", "hd95")


# --- configuration shared by the studies -------------------------------------------------------------------------

def read_options(path: str | os.PathLike) -> dict:
    """The JSON object of a study's options file (training-configuration keys, all optional)."""
    return read_json_object(path, "options file")


def study_config(defaults: Mapping, options: Mapping | None, overrides: Mapping | None, output_dir: str | os.PathLike,
                 base_dir: str | os.PathLike = ".") -> TrainConfig:
    """The base training configuration of a study: its defaults, then the user's options, then overrides (quick
    settings, command-line values); training runs go under ``output_dir/runs``."""
    values = merge_options(defaults, options, overrides)
    values["output_dir"] = str(Path(output_dir).resolve() / "runs")
    if not values.get("dataset"):
        raise InputError("no dataset given: name a dataset folder or manifest")
    return config_from_dict(values, base_dir)


def prepare_study_cases(config: TrainConfig, masks: Sequence[str], min_patients: int,
                        progress: Progress) -> list[PreparedCase]:
    """Read, check and prepare a study's dataset once (every run of the study trains from these cases)."""
    return prepare_checked(load_dataset(config.dataset, require=masks), config.task, config.preprocess, masks,
                           min_patients, progress, view=lambda case: select_channels(case, config.inputs))


def train_folds(config: TrainConfig, split: Split, cases: Sequence[PreparedCase], test_cases: Sequence[PreparedCase],
                progress: Progress) -> list[FoldOutcome]:
    """Train the configured folds of ``split`` into ``<output_dir>/<name>/fold_k`` (resumes finished epochs)."""
    output = Path(config.output_dir) / config.name
    output.mkdir(parents=True, exist_ok=True)
    write_json(config.to_dict(), output / "config.json")
    write_json(split.to_dict(), output / "split.json")
    device, start = resolve_device(config.device), initial_weights(config)
    return [train_fold(config, split.folds[k], list(cases), list(test_cases), output, device, DistributedContext(),
                       progress, start) for k in config.fold_numbers]


def mean_and_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the defined values (sd 0 for one value, None for none)."""
    defined = [float(value) for value in values if value is not None]
    if not defined:
        return None, None
    return float(np.mean(defined)), float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0


def plus_minus(values: Sequence[float | None], digits: int = 4) -> str:
    """``mean ± sd`` as seed 000's tables print it."""
    mean, sd = mean_and_sd(values)
    return "" if mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


# --- the approaches study ---------------------------------------------------------------------------------------

def approaches_config(options: Mapping | None, output_dir: str | os.PathLike, quick: bool = False,
                      overrides: Mapping | None = None, base_dir: str | os.PathLike = ".") -> TrainConfig:
    """The study's base configuration: seed 000's UNet++ and hybrid loss unless the options say otherwise."""
    defaults = {"name": "approaches", "task": "lesion", "architecture": "unetpp", "loss": "hybrid"}
    config = study_config(defaults, options, merge_options(QUICK_OPTIONS if quick else None, overrides), output_dir,
                          base_dir)
    if config.task != "lesion":
        raise InputError(f"the approaches study trains lesion models; the options set task {config.task!r}")
    if config.test_patients < 1:
        raise InputError("the approaches study tests on held-out patients: test_patients must be at least 1")
    return config


def _approach_config(config: TrainConfig, approach: str) -> TrainConfig:
    return dataclasses.replace(config, approach=approach, name=approach)


@dataclass(frozen=True)
class ApproachData:
    """What an approach feeds the network, per patient: the breast and lesion masks of its slices and crop."""

    approach: Approach
    breast_stacks: list[np.ndarray]
    lesion_stacks: list[np.ndarray]
    input_shapes: list[tuple[int, int]]
    pixels: list[int]


def approach_data(config: TrainConfig, approach: str, cases: Sequence[PreparedCase], ov_height: int) -> ApproachData:
    """Each case as the approach's slice dataset selects and crops it (one case at a time, to keep memory low)."""
    breast_stacks, lesion_stacks, input_shapes, pixels = [], [], [], []
    approach_config = _approach_config(config, approach)
    for case in cases:
        dataset = make_slice_dataset(approach_config, [case], training=False, ov_height=ov_height)
        box = dataset.boxes.get(case.case_id)
        breast = case.breast[dataset.slice_numbers[0]]
        if box is not None:
            breast = breast[:, slice(*box.rows), slice(*box.cols)]
        breast_stacks.append(pad_to(breast, dataset.spatial_shape))
        lesion_stacks.append(dataset.labels[0][:, 0])
        input_shapes.append(tuple(dataset.spatial_shape))
        pixels.append(int(breast.size))
    return ApproachData(Approach(approach), breast_stacks, lesion_stacks, input_shapes, pixels)


def _input_row(data: ApproachData, wv_pixels: float, panel: OverlayPanel) -> dict:
    profile = midline_profile(panel.breast)
    shape = [max(sizes) for sizes in zip(*data.input_shapes)]
    return {
        "approach": data.approach.title,
        "network_input_hw": shape,
        "slices": int(sum(stack.shape[0] for stack in data.breast_stacks)),
        "slices_per_patient": float(np.mean([stack.shape[0] for stack in data.breast_stacks])),
        "pixels_per_patient": float(np.mean(data.pixels)),
        "pixels_vs_wv": float(np.mean(data.pixels) / wv_pixels),
        "h_max_mid_px": None if profile is None else profile.h_max_mid,
    }


def _fold_row(approach: Approach, outcome: FoldOutcome, config: TrainConfig) -> dict:
    """Everything one fold of one approach gives the tables (unrounded; the Markdown rounds)."""
    result = outcome.result
    best = result.history[result.best_epoch - 1] if result.history else {}
    return {
        "approach": approach.title,
        "fold": outcome.fold,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "train_loss": best.get("train_loss"),
        "val_loss": best.get("val_loss"),
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds / max(len(result.history), 1),
        "cfp_kg": cfp_from_time(result.seconds, config.carbon),
        "energy_method": outcome.energy["method"],
        "energy_kwh": outcome.energy["energy_kwh"],
        "energy_co2_kg": outcome.energy["co2_kg"],
        **{f"test_{key}": outcome.test.get(key) for key in TEST_METRICS},
        "lesion_bins": outcome.test.get("lesion_bins", []),
    }


def _test_row(approach: Approach, folds: Sequence[dict]) -> dict:
    return {"approach": approach.title,
            **{key: mean_and_sd([row[f"test_{key}"] for row in folds])[0] for key in TEST_METRICS},
            "dice_sd": mean_and_sd([row["test_dice"] for row in folds])[1]}


def _lesion_row(approach: Approach, folds: Sequence[dict]) -> dict:
    """FP and FN lesions per volume bin, summed over the fold models (each tested on the same test patients)."""
    row: dict = {"approach": approach.title}
    for kind in ("fp", "fn"):
        for fold in folds:
            for volume_bin in fold["lesion_bins"]:
                key = f"{kind.upper()} {volume_bin['label']} mm3"
                row[key] = row.get(key, 0) + volume_bin[kind]
    return row


def _carbon_rows(approaches: Sequence[Approach], folds_by_approach: Sequence[Sequence[dict]]) -> list[dict]:
    mean_cfp = [mean_and_sd([row["cfp_kg"] for row in folds])[0] for folds in folds_by_approach]
    rows = []
    for approach, folds, cfp, norm in zip(approaches, folds_by_approach, mean_cfp, normalised_cfp(mean_cfp)):
        minutes = mean_and_sd([row["train_seconds"] / 60 for row in folds])
        rows.append({
            "approach": approach.title,
            "train_minutes_mean": minutes[0], "train_minutes_sd": minutes[1],
            "cfp_kg_mean": cfp, "cfp_kg_sd": mean_and_sd([row["cfp_kg"] for row in folds])[1],
            "normalised_cfp": norm,
            "last_epochs_mean": mean_and_sd([row["epochs"] for row in folds])[0],
            "best_epoch_mean": mean_and_sd([row["best_epoch"] for row in folds])[0],
            "seconds_per_epoch": mean_and_sd([row["seconds_per_epoch"] for row in folds])[0],
            "energy_method": folds[0]["energy_method"],
            "energy_kwh_mean": mean_and_sd([row["energy_kwh"] for row in folds])[0],
        })
    return rows


def _paper_rows(approaches: Sequence[Approach]) -> list[dict]:
    rows = []
    for approach in approaches:
        paper = PAPER_RESULTS[approach.value]
        rows.append({"approach": approach.title, "train loss": paper["train_loss"], "val loss": paper["val_loss"],
                     "dice": paper["dice"], "iou": paper["iou"], "precision": paper["precision"],
                     "recall": paper["recall"], "FP <10/10-20/>20": "/".join(map(str, paper["fp"])),
                     "FN <10/10-20/>20": "/".join(map(str, paper["fn"])), "TT per fold (min)": paper["minutes"],
                     "CFP per fold (kg)": paper["cfp_kg"], "last epochs": paper["last_epochs"]})
    return rows


def _markdown(config: TrainConfig, split: Split, tables: dict, figures: Sequence[str]) -> str:
    folds = tables["folds"]
    titles = list(dict.fromkeys(row["approach"] for row in folds))
    loss_summary = [{"approach": title,
                     "training loss": plus_minus([r["train_loss"] for r in folds if r["approach"] == title]),
                     "validation loss": plus_minus([r["val_loss"] for r in folds if r["approach"] == title])}
                    for title in titles]
    carbon_summary = [{"approach": row["approach"],
                       "TT per fold (min)": plus_minus([r["train_seconds"] / 60 for r in folds
                                                        if r["approach"] == row["approach"]], 2),
                       "CFP per fold (kg, Eq. 9)": plus_minus([r["cfp_kg"] for r in folds
                                                              if r["approach"] == row["approach"]], 5),
                       "normalised CFP (Eq. 10)": row["normalised_cfp"],
                       "last epochs": row["last_epochs_mean"], "best epoch": row["best_epoch_mean"],
                       "s per epoch": row["seconds_per_epoch"]}
                      for row in tables["table6"]]
    sections = [
        "# Data approaches for lesion segmentation after BRS (seed 000)\n",
        f"Dataset `{config.dataset}`; {config.architecture} with the {config.loss} loss; {len(config.fold_numbers)} "
        f"of {config.folds} folds; {config.optimisation.epochs} epochs at most; seed {config.optimisation.seed}. "
        f"Test patients: {', '.join(split.test_patients)}.\n",
        "## Table 2: input shape per patient (x, y, z)\n", markdown_table(tables["table2_shapes"]),
        "\nPer approach (network input after padding to a multiple of 32, pixels before padding):\n",
        markdown_table(tables["table2_inputs"]),
        "\n## Table 3: training and validation loss (best epoch of each fold)\n", markdown_table(loss_summary),
        "\n", markdown_table(tables["table3"], float_digits=4),
        "\n## Table 4: test metrics (mean over the fold models; HD95 in mm)\n", markdown_table(tables["table4"]),
        "\n## Table 5: FP and FN lesions by volume at threshold "
        f"{config.threshold} (summed over the fold models)\n", markdown_table(tables["table5"]),
        "\n## Table 6: training time and carbon footprint per fold\n", markdown_table(carbon_summary),
        "\nCFP = 0.475 kg/kWh x 1 kW x TT / 3600 (Eq. 9, the settings' power and emission factor); normalised CFP "
        "= 1 - (CFP_max - CFP_min) CFP / CFP_max over the approaches' mean CFP (Eq. 10).\n",
        "\n## Seed 000 reported (Stavanger, 352 x 352 x 150, 5 folds)\n", markdown_table(tables["paper"]),
    ]
    if figures:
        sections += ["\n## Figures\n", *(f"![{name}]({name})\n" for name in figures)]
    return "\n".join(sections)


def run_approaches(config: TrainConfig, output_dir: str | os.PathLike, approaches: Sequence[str] = APPROACHES,
                   progress: Progress | None = None) -> dict:
    """Train ``config`` once per approach (same cases, split and seed) and write the study's tables and figures."""
    progress = progress or silent()
    chosen = [Approach(name) for name in dict.fromkeys(approaches)]
    if not chosen:
        raise InputError("choose at least one approach")
    cases = prepare_study_cases(config, ("breast", "lesions"), config.folds + config.test_patients, progress)
    split = split_patients([case.patient_id for case in cases], config.folds, config.test_patients,
                           config.optimisation.seed)
    ov_height, _ = uniform_ov_boxes([case.breast for case in cases], [case.spacing_yx for case in cases],
                                    config.safe_distance_mm)
    data = [approach_data(config, approach.value, cases, ov_height) for approach in chosen]
    test_cases = [case for case in cases if case.patient_id in split.test_patients]
    folds_by_approach = []
    for index, approach in enumerate(chosen):
        progress.update("approaches", index / len(chosen))
        outcomes = train_folds(_approach_config(config, approach.value), split, cases, test_cases, progress)
        folds_by_approach.append([_fold_row(approach, outcome, config) for outcome in outcomes])
    progress.update("approaches", 1.0)
    panels = [OverlayPanel.from_stacks(d.approach.title, d.breast_stacks, d.lesion_stacks) for d in data]
    wv_pixels = float(np.mean([np.prod(case.shape) for case in cases]))
    folds = [row for rows in folds_by_approach for row in rows]
    tables = {
        "table2_shapes": table2_shapes(cases, safe_distance_mm=config.safe_distance_mm),
        "table2_inputs": [_input_row(d, wv_pixels, panel) for d, panel in zip(data, panels)],
        "table3": [{key: row[key] for key in ("approach", "fold", "train_loss", "val_loss", "best_epoch", "epochs")}
                   for row in folds],
        "table4": [_test_row(approach, rows) for approach, rows in zip(chosen, folds_by_approach)],
        "table5": [_lesion_row(approach, rows) for approach, rows in zip(chosen, folds_by_approach)],
        "table6": _carbon_rows(chosen, folds_by_approach),
        "table6_folds": [{key: row[key] for key in ("approach", "fold", "train_seconds", "cfp_kg", "epochs",
                                                     "best_epoch", "energy_method", "energy_kwh", "energy_co2_kg")}
                         for row in folds],
        "folds": folds,
        "paper": _paper_rows(chosen),
    }
    _write_report(config, split, tables, [p for p in panels if p.title != Approach.WV_NO_BRS.title], output_dir)
    return {"output_dir": str(Path(output_dir)), "config": config.to_dict(), "split": split.to_dict(),
            "tables": tables}


def _write_report(config: TrainConfig, split: Split, tables: dict, panels: Sequence[OverlayPanel],
                  output_dir: str | os.PathLike) -> None:
    """Tables (CSV, Markdown, JSON) and figures, staged and moved into ``output_dir`` together."""
    csv_names = {"table2_shapes": "table2_shapes.csv", "table2_inputs": "table2_inputs.csv",
                 "table3": "table3_loss.csv", "table4": "table4_test.csv", "table5": "table5_lesions.csv",
                 "table6": "table6_carbon.csv", "table6_folds": "table6_folds.csv"}
    with atomic_output_dir(output_dir) as staging:
        for key, name in csv_names.items():
            write_csv(tables[key], staging / name)
        figures = []
        if panels:
            plot_overlay_maps(panels, staging / "overlay_maps.png")
            plot_midline_profiles(panels, staging / "midline_profiles.png")
            figures = ["overlay_maps.png", "midline_profiles.png"]
        (staging / "tables.md").write_text(_markdown(config, split, tables, figures), encoding="utf-8")
        write_json({"config": config.to_dict(), "split": split.to_dict(), "tables": tables}, staging / "study.json")
