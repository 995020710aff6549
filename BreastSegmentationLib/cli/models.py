"""``breastseg models``: the architectures this version can build, with their parameter counts."""

from __future__ import annotations

import argparse

from ..models.registry import list_architectures
from ..progress import Progress
from .console import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model architectures and their parameter counts",
        description="List every architecture a model card may name, with its dimensions, parameter count "
        "(2 inputs, 1 output, default options) and the paper it comes from.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (with each architecture's options)")
    parser.set_defaults(handler=run)


def format_table(architectures: list[dict]) -> str:
    """A plain-text table: name, dimensions, parameters, source and description."""
    header = ("architecture", "dims", "parameters", "source", "description")
    rows = [header] + [
        (item["name"], f"{item['spatial_dims']}-D", f"{item['parameters']:,}", item["source"], item["description"])
        for item in architectures
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]) for row in rows
    )


def run(args: argparse.Namespace, progress: Progress) -> int:
    architectures = list_architectures()
    if args.json:
        print_json(architectures)
    else:
        print(format_table(architectures))
    return 0
