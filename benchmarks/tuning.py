"""What the benchmarks that look at a model set's mistakes on phantom tuning studies share: their arguments and the
studies segmented one after the other. Not a benchmark itself."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from BreastSegmentationLib.data.phantom import PhantomCase, generate_case
from BreastSegmentationLib.inference.pipeline import Segmentation, load_models, segment_images
from BreastSegmentationLib.inference.runtime import configure_cpu_memory


def tuning_parser(description: str, out_help: str) -> argparse.ArgumentParser:
    """``--models``, ``--phantom-seeds`` (tuning seeds only) and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", help="model folder (default: the bundled models)")
    parser.add_argument("--phantom-seeds", type=int, nargs=2, default=(3000, 48), metavar=("FIRST", "COUNT"),
                        help="tuning seeds (default 3000 48; 9000 and up are the held-out ones)")
    parser.add_argument("--out", help=out_help)
    return parser


def segmented_studies(args: argparse.Namespace) -> Iterator[tuple[int, PhantomCase, Segmentation]]:
    """(seed, phantom study, segmentation at the models' cards' operating point) of each tuning seed in turn."""
    configure_cpu_memory()  # as the breastseg command does
    models = load_models(args.models, "auto")
    first, count = args.phantom_seeds
    for seed in range(first, first + count):
        case = generate_case(seed)
        yield seed, case, segment_images(case.pre, case.posts[0], models)
