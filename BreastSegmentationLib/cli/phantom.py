"""``breastseg phantom``: write synthetic breast DCE-MRI cases (NIfTI, optionally DICOM) and a gallery image."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.phantom import PhantomConfig, read_case, write_cases
from ..errors import InputError
from ..progress import Progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write synthetic breast DCE-MRI cases with breast and lesion masks",
        description="Write N synthetic prone breast DCE-MRI cases into DIR/case_000, DIR/case_001, ...: pre.nii.gz, "
                    "post.nii.gz (first post-contrast), post2.nii.gz, ..., breast.nii.gz, lesions.nii.gz and "
                    "case.json (scanner, timing, lesions). The same seed always gives the same cases; case i "
                    "does not depend on how many cases are written.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--cases", type=int, default=1, metavar="N", help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="non-negative seed (default 0)")
    parser.add_argument("--dicom", action="store_true",
                        help="also write each case as a DICOM study in case_XXX/dicom (vendor convention by seed)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="voxels per axis instead of a random clinical matrix (field of view kept), "
                             "e.g. 64 64 24 for quick tests")
    parser.add_argument("--lesions", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="lesions per case drawn from MIN..MAX (default 0 3; e.g. 1 3 for lesion training data)")
    parser.add_argument("--gallery", type=Path, metavar="PNG",
                        help="also save pre / post / subtraction of up to 4 of the cases side by side as PNG")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, progress: Progress) -> int:
    if args.gallery is not None and args.gallery.suffix.lower() != ".png":
        raise InputError("the gallery must be a .png file", args.gallery)
    config = PhantomConfig() if args.lesions is None else PhantomConfig(lesion_count_range=tuple(args.lesions))
    folders = write_cases(args.out, args.cases, args.seed, config, dicom=args.dicom, progress=progress,
                          shape=args.shape)
    if args.gallery is not None:
        from ..reports.gallery import save_gallery  # matplotlib only when a gallery is asked for

        save_gallery([read_case(folder) for folder in folders[:4]], args.gallery)
        print(f"gallery: {args.gallery}")
    for folder in folders:
        print(folder)
    return 0
