"""``breastseg inspect``: which series of a DICOM study are the pre-contrast and first post-contrast phases."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io.dicom import discover_study
from ..io.outputs import atomic_output_file
from ..progress import Progress
from .console import print_json

DESCRIPTION = """\
Read the headers of every DICOM file under STUDY_DIR (any nesting; other files are ignored with a warning),
group them into series and phases, and print as JSON: the pre-contrast and first post-contrast phases with the
reasons they were chosen, all post-contrast phases in time order, subtraction series, every other series with
its class (T2, localizer, segmentation, secondary capture, ...), what is missing and the warnings.

Exit code 0 whenever the study could be read, also when a phase is missing: reporting that is this command's
job, so check "missing" in the JSON (e.g. "no pre-contrast phase found"). Exit code 2 when STUDY_DIR does not
exist or holds no readable DICOM file; then nothing is printed and no --out file is written."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="find the pre- and post-contrast phases of a DICOM study (JSON report)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dicom", type=Path, required=True, metavar="STUDY_DIR",
                        help="folder holding the DICOM files of one study")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON report to FILE")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, progress: Progress) -> int:
    report = discover_study(args.dicom, progress).to_dict()
    if args.out is not None:
        with atomic_output_file(args.out) as temporary:
            temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_json(report)
    return 0
