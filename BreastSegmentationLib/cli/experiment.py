"""``breastseg experiment``: the studies of the source papers, reproduced on any dataset.

- ``approaches``: seed 000's comparison of WV without BRS, WV with BRS, SLS and OV for lesion segmentation.
- ``active-learning``: seed 001's sample-selection strategies for breast region segmentation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import Progress
from ..training.active_learning import STRATEGIES, ActiveLearningSettings, active_learning_config, run_active_learning
from ..training.experiments import APPROACHES, approaches_config, read_options, run_approaches
from .console import print_json


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("options", nargs="?", type=Path, metavar="OPTIONS.json",
                        help="JSON of training-configuration keys (as for 'breastseg train', all optional); "
                             "relative paths in it are read from its folder")
    parser.add_argument("--dataset", type=Path, help="dataset folder or manifest (overrides the options' dataset)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder: tables, figures and runs/ with every training (resumed when rerun)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test settings: few folds and epochs and a small network (use small volumes)")
    parser.add_argument("--epochs", type=int, help="override optimisation.epochs")
    parser.add_argument("--folds", type=int, nargs="+", metavar="K", help="train only these folds (0-based)")
    parser.add_argument("--architecture", help="override the architecture (see 'breastseg models')")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the configuration's device")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="reproduce the papers' studies (data approaches, active learning) on a dataset",
        description="Reproduce the source papers' studies on any dataset with breast (and lesion) masks, e.g. "
                    "phantoms from 'breastseg phantom'. Every training of a study uses the same cases, split and "
                    "seed; tables (Markdown and CSV), figures (PNG) and a JSON of all numbers are written "
                    "together into --out.",
    )
    studies = parser.add_subparsers(dest="study", metavar="STUDY", required=True)
    approaches = studies.add_parser(
        "approaches",
        help="seed 000: one lesion model on WV without BRS, WV with BRS, SLS and OV",
        description="Train the same lesion model on whole volumes without and with BRS, on lesion slices (SLS) "
                    "and on the OV crop, with patient-level cross-validation and held-out test patients; write "
                    "the analogues of seed 000's Tables 2-6 and Fig. 6-7. Defaults: UNet++, hybrid loss, 5 folds, "
                    "2 test patients.",
    )
    _add_common(approaches)
    approaches.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES), metavar="NAME",
                            help=f"approaches to compare: {', '.join(APPROACHES)} (default: all four)")
    approaches.set_defaults(handler=run_approaches_command)
    active = studies.add_parser(
        "active-learning",
        help="seed 001: sample-selection strategies for breast region segmentation",
        description="Measure Breast Anatomy Geometry (Nearest Point, Breast Size), select the training patients "
                    "by each strategy at each proportion, train a breast region model on them and test it on all "
                    "other patients; write the BAG analysis and the analogue of seed 001's Table 2 (with HD and "
                    "CFP). Defaults: FCN-ResNet50, Dice loss, 5 folds.",
    )
    _add_common(active)
    active.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES), metavar="NAME",
                        help=f"selection strategies: {', '.join(STRATEGIES)} (default: all)")
    active.add_argument("--proportions", nargs="+", type=float, default=[10, 20, 30, 40], metavar="PERCENT",
                        help="training proportions in percent of the patients (default: 10 20 30 40)")
    active.set_defaults(handler=run_active_learning_command)


def _options_and_overrides(args: argparse.Namespace) -> tuple[dict, dict, Path]:
    """The options file's values, the command line's overrides and the folder relative paths start from."""
    options = read_options(args.options) if args.options is not None else {}
    base_dir = args.options.parent if args.options is not None else Path.cwd()
    overrides = {
        "dataset": None if args.dataset is None else str(args.dataset.resolve()),
        "optimisation": None if args.epochs is None else {"epochs": args.epochs},
        "run_folds": args.folds,
        "architecture": args.architecture,
        "device": args.device,
    }
    return options, {key: value for key, value in overrides.items() if value is not None}, base_dir


def run_approaches_command(args: argparse.Namespace, progress: Progress) -> int:
    options, overrides, base_dir = _options_and_overrides(args)
    config = approaches_config(options, args.out, args.quick, overrides, base_dir)
    results = run_approaches(config, args.out, args.approaches, progress)
    print_json({"output_dir": results["output_dir"], "tables": str(Path(args.out) / "tables.md"),
                "test": results["tables"]["table4"]})
    return 0


def run_active_learning_command(args: argparse.Namespace, progress: Progress) -> int:
    options, overrides, base_dir = _options_and_overrides(args)
    config = active_learning_config(options, args.out, args.quick, overrides, base_dir)
    settings = ActiveLearningSettings(tuple(args.strategies), tuple(p / 100.0 for p in args.proportions))
    results = run_active_learning(config, args.out, settings, progress)
    print_json({"output_dir": results["output_dir"], "tables": str(Path(args.out) / "tables.md"),
                "table2": results["tables"]["table2"]})
    return 0
