"""``breastseg segment``: breast region and lesions of one DCE-MRI study."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..inference.pipeline import SegmentationOptions, load_models
from ..inference.study import StudyInput, segment_study, study_from_dicom, study_from_files
from ..batch import BatchOptions, pooled_scores, run_batch
from ..progress import Progress
from .console import print_json

log = logging.getLogger("breastseg")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``segment`` and ``demo``."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the models run (default: auto = the GPU when there is one)")
    parser.add_argument("--models", metavar="DIR",
                        help="folder with one breast and one lesion model card, and optionally one foci classifier "
                             "(default: the bundled models)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="lesion probability threshold (default: the lesion model card's)")
    parser.add_argument("--min-lesion-mm3", type=float, metavar="V",
                        help="drop predicted lesions smaller than this in mm3 (default: the lesion model card's)")
    parser.add_argument("--min-lesion-peak", type=float, metavar="P",
                        help="drop predicted lesions whose probability nowhere reaches P; the threshold draws their "
                             "outline (default: the lesion model card's; 0 turns this off)")
    parser.add_argument("--no-motion-correction", dest="motion_correction", action="store_false",
                        help="keep the post-contrast phase as it is; by default a rigid motion of the patient between "
                             "the phases is found by registration, undone when 0.5 mm or more, and reported in "
                             "summary.json")
    parser.add_argument("--no-foci", dest="foci", action="store_false",
                        help="do not look for small foci with the model folder's foci classifier (when it has one)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="run the breast and lesion networks in float16 on a GPU or bfloat16 on a CPU with native "
                             "bf16 (about 1.7 times faster there, the same lesions on 96 phantom studies); elsewhere "
                             "float32 as without it")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment the breast region and lesions of a DCE-MRI study",
        description=(
            "Segment one study given as pre- and first post-contrast volumes (NIfTI, NRRD, MHA or a single-series "
            "DICOM folder) or as a DICOM study folder whose phases are found automatically. Writes breast.nii.gz, "
            "lesions.nii.gz (labels 1..N, largest first), lesion_probability.nii.gz, lesions.csv, summary.json and "
            "overview.png into OUT; with --reference also metrics.json (Dice, IoU, precision, recall, HD, HD95, "
            "FP/FN lesions by volume) and lesion_matches.csv. Nothing is written unless everything succeeds. "
            "With --input-dir every study of a folder (sub-folders with a pre/post pair, named so or as nnU-Net "
            "channels CASE_0000/CASE_0001, or DICOM files) is segmented into OUT/<study>/ with one summary table "
            "(batch_summary.csv; with --reference-dir also each scored study's Dice and lesions found, missed and "
            "false); a failing study is reported there and the others go on (exit code 1 if any failed)."
        ),
    )
    source = parser.add_argument_group("input (--pre and --post, --dicom, or --input-dir)")
    source.add_argument("--pre", metavar="FILE", help="pre-contrast volume")
    source.add_argument("--post", metavar="FILE", help="first post-contrast volume")
    source.add_argument("--dicom", metavar="STUDY_DIR", help="DICOM study folder (see 'breastseg inspect')")
    source.add_argument("--input-dir", metavar="DIR", help="a folder of studies, segmented one after the other")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--reference", metavar="LESION_MASK",
                        help="reference lesion mask on the pre-contrast grid: adds metrics and the FP/FN table")
    parser.add_argument("--reference-dir", metavar="DIR",
                        help="with --input-dir: reference lesion masks named after their studies (study CASE: "
                             "DIR/case.nii.gz, any case); each study found there is scored as with --reference "
                             "and the batch summary adds Dice and lesions found, missed and false")
    add_model_arguments(parser)
    parser.set_defaults(handler=run, parser=parser)


def options_from(args: argparse.Namespace) -> SegmentationOptions:
    return SegmentationOptions(threshold=args.threshold, min_lesion_mm3=args.min_lesion_mm3,
                               min_lesion_peak=args.min_lesion_peak, motion_correction=args.motion_correction,
                               foci=args.foci, mixed_precision=args.mixed_precision)


def read_study(args: argparse.Namespace, progress: Progress) -> StudyInput:
    if sum(bool(choice) for choice in (args.dicom, args.pre or args.post, args.input_dir)) > 1:
        args.parser.error("give one input: --pre and --post, --dicom, or --input-dir")
    if args.dicom:
        return study_from_dicom(args.dicom, progress)
    if not (args.pre and args.post):
        args.parser.error("give --pre and --post (or --dicom)")
    return study_from_files(args.pre, args.post)


def run_many(args: argparse.Namespace, progress: Progress) -> int:
    if args.reference or args.pre or args.post or args.dicom:
        args.parser.error("--input-dir segments whole folders: it takes no --pre, --post, --dicom or --reference "
                          "(--reference-dir gives the references)")
    options = BatchOptions(device=args.device, models=args.models and Path(args.models),
                           segmentation=options_from(args))
    results = run_batch(args.input_dir, args.out, options, progress, args.reference_dir)
    print_json({"output": str(Path(args.out).resolve()), "studies": len(results),
                "failed": [{"study": r.study, "status": r.status, "message": r.message}
                           for r in results if r.status != "ok"], **pooled_scores(results)})
    return 0 if all(r.status == "ok" for r in results) else 1


def run(args: argparse.Namespace, progress: Progress) -> int:
    if args.input_dir:
        return run_many(args, progress)
    if args.reference_dir:
        args.parser.error("--reference-dir goes with --input-dir; one study takes --reference")
    study = read_study(args, progress)
    models = load_models(args.models, args.device)
    summary = segment_study(study, args.out, models, options_from(args), args.reference, progress=progress)
    print_json({"output": str(Path(args.out).resolve()), "lesion_count": summary["lesion_count"],
                "seconds": summary["seconds"]["total"], "device": summary["device"],
                "network_precision": summary["network_precision"],
                **({"metrics": {k: summary["metrics"][k] for k in ("dice", "iou", "precision", "recall", "hd95")}}
                   if "metrics" in summary else {})})
    return 0
