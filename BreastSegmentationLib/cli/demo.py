"""``breastseg demo``: the whole job on the bundled sample case."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference.pipeline import load_models
from ..inference.study import segment_study, study_from_files
from ..progress import Progress
from ..resources import sample_dir
from .console import print_json
from .segment import add_model_arguments, options_from


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="segment the bundled sample case (a synthetic phantom study) and write the usual outputs",
        description=(
            "Run 'breastseg segment' on the bundled sample case (a synthetic DCE-MRI phantom, not a patient) with "
            "its reference lesion mask, so that the outputs include metrics.json. Look at OUT/overview.png first."
        ),
    )
    parser.add_argument("--out", default="breastseg-demo", metavar="DIR", help="output folder (default: %(default)s)")
    add_model_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, progress: Progress) -> int:
    sample = sample_dir()
    study = study_from_files(sample / "pre.nii.gz", sample / "post.nii.gz")
    models = load_models(args.models, args.device)
    summary = segment_study(study, args.out, models, options_from(args), sample / "lesions.nii.gz",
                            progress=progress)
    metrics = summary["metrics"]
    print_json({"output": str(Path(args.out).resolve()), "lesion_count": summary["lesion_count"],
                "seconds": summary["seconds"]["total"], "device": summary["device"],
                "network_precision": summary["network_precision"],
                "dice": metrics["dice"], "lesions_detected": metrics["lesions"]["tp"],
                "false_positive_lesions": metrics["lesions"]["fp"]})
    return 0
