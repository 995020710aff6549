"""``breastseg train CONFIG``: cross-validated training from a JSON configuration."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..progress import Progress
from ..training.config import load_config
from ..training.run import run_training
from .console import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model with patient-level cross-validation",
        description=(
            "Train a breast (BRS) or lesion model from a JSON configuration (see the README for its keys): "
            "the dataset is checked first, folds are split by patient, each fold keeps its best epoch, and a "
            "model card + safetensors weights are written for 'breastseg segment --models'. An interrupted run "
            "resumes from its last finished epoch when started again. For several GPUs or nodes start it with "
            "torchrun."
        ),
    )
    parser.add_argument("config", help="training configuration (JSON)")
    parser.add_argument("--folds", type=int, nargs="+", metavar="K", help="train only these folds (0-based)")
    parser.add_argument("--epochs", type=int, help="override optimisation.epochs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the configuration's device")
    parser.add_argument("--dataset", help="override the configuration's dataset (folder or manifest)")
    parser.add_argument("--output-dir", help="override the configuration's output folder")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, progress: Progress) -> int:
    config = load_config(args.config)
    overrides = {"run_folds": args.folds, "device": args.device,
                 "dataset": args.dataset and str(Path(args.dataset).resolve()),
                 "output_dir": args.output_dir and str(Path(args.output_dir).resolve()),
                 "optimisation": None if args.epochs is None else replace(config.optimisation, epochs=args.epochs)}
    config = replace(config, **{key: value for key, value in overrides.items() if value is not None})
    results = run_training(config, progress)
    if results:
        print_json(results)
    return 0
