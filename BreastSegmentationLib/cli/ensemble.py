"""``breastseg ensemble``: one model card for several trained networks, whose probabilities inference averages."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.ensemble import SHARED_KEYS, save_ensemble
from ..progress import Progress

DESCRIPTION = f"""\
Write NAME.json into OUT with copies of the weights of every CARD: an ensemble that 'breastseg segment --models OUT'
runs as one model, averaging the networks' probabilities (as nnU-Net averages its folds). The cards must agree in
  {', '.join(SHARED_KEYS)};
threshold, lesion cleaning and mirroring are the first card's. Every weights file is checked against its card's
SHA-256 before anything is written. Put a breast model card into OUT as well to use it with 'segment'. Example:
  breastseg ensemble runs/a/model/a.json runs/b/model/b.json --name lesion_ab --out my_models"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ensemble",
        help="combine trained models of one architecture into an ensemble card",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cards", type=Path, nargs="+", metavar="CARD", help="model cards (JSON) of the members")
    parser.add_argument("--name", required=True, help="name of the ensemble (its card is NAME.json)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="folder to write the ensemble into")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, progress: Progress) -> int:
    print(save_ensemble(args.cards, args.out, args.name))
    return 0
