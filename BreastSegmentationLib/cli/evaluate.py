"""``breastseg evaluate``: metrics, lesion tables and lesion FP/FN counts of a predicted mask against a reference."""

from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from ..evaluation.lesions import DEFAULT_BINS_MM3, MATCH_COLUMNS, evaluate_case, lesion_table_columns
from ..evaluation.metrics import require_same_grid
from ..io.images import check_mask, read_image, read_volume
from ..io.outputs import atomic_output_dir
from ..progress import Progress
from ..reports.tables import write_csv, write_json

DESCRIPTION = """\
Compare a predicted mask with a reference mask on the same voxel grid and write, into OUT:
  metrics.json        dice, iou, precision, recall, hd and hd95 (mm), voxel counts, lesion TP/FP/FN per volume bin,
                      and the conventions used (empty masks, HD95 definition, lesion matching)
  per_slice.csv       voxel counts and overlap scores for every slice k (third image axis; axial for axial scans)
  lesions_pred.csv    one row per predicted lesion (26-connected component): volume, RAS centroid, bounding box,
  lesions_ref.csv     longest diameter, and the intensity columns below
  lesion_matches.csv  every lesion of both masks with its volume bin and status (tp, fp or fn)
Masks may be label maps or probability maps (foreground where the value rounds to a non-zero integer).
Intensity columns: --pre and --post together add mean and peak relative enhancement (post - pre) / pre;
--image adds mean and peak of that image (e.g. a subtraction image or a probability map). All images must lie on
the reference grid: nothing is resampled. OUT is written whole or not at all."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare a predicted mask with a reference: Dice, HD95, lesion tables, FP/FN lesions by volume",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred", required=True, type=Path,
                        help="predicted mask or probability map (NIfTI, NRRD, MetaImage or DICOM folder)")
    parser.add_argument("--ref", required=True, type=Path, help="reference (ground-truth) mask on the same grid")
    parser.add_argument("--pre", type=Path, help="pre-contrast image, with --post: relative enhancement per lesion")
    parser.add_argument("--post", type=Path, help="post-contrast image, with --pre: relative enhancement per lesion")
    parser.add_argument("--image", type=Path, help="any image for mean and peak intensity per lesion (independent of "
                                                   "--pre/--post; e.g. a subtraction image or probability map)")
    parser.add_argument("--bins", type=float, nargs="+", default=list(DEFAULT_BINS_MM3), metavar="MM3",
                        help="upper lesion-volume limits of all bins but the last, in mm3 (default: 10 20, i.e. "
                             "<10, 10-20, >=20 as seed 000 Table 5)")
    parser.add_argument("--both-empty-score", type=float, default=1.0, metavar="SCORE",
                        help="dice, iou, precision and recall when both masks are empty (default 1; MAMA-MIA uses 0)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; existing files replaced)")
    parser.set_defaults(handler=run)


def read_optional_volume(path: Path | None, name: str) -> sitk.Image | None:
    return None if path is None else read_volume(path, name)


def read_inputs(args: argparse.Namespace) -> dict[str, sitk.Image | None]:
    """Read and check every input (all on the reference grid); raise InputError naming the file otherwise."""
    if (args.pre is None) != (args.post is None):
        raise InputError("--pre and --post go together (relative enhancement needs both)")
    images = {
        "ref": check_mask(read_image(args.ref), "reference mask", args.ref),
        "pred": check_mask(read_image(args.pred), "predicted mask", args.pred),
        "pre": read_optional_volume(args.pre, "pre-contrast image"),
        "post": read_optional_volume(args.post, "post-contrast image"),
        "intensity": read_optional_volume(args.image, "intensity image"),
    }
    paths = {"pred": args.pred, "pre": args.pre, "post": args.post, "intensity": args.image}
    for key, path in paths.items():
        if images[key] is not None:
            require_same_grid(images[key], images["ref"], str(path), f"the reference {args.ref}")
    return images


def summary_line(metrics: dict) -> str:
    """One line for the console: overlap, distances and lesion counts."""
    def millimetres(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} mm"

    lesions = metrics["lesions"]
    return (f"dice {metrics['dice']:.3f}  iou {metrics['iou']:.3f}  precision {metrics['precision']:.3f}  "
            f"recall {metrics['recall']:.3f}  hd {millimetres(metrics['hd'])}  hd95 {millimetres(metrics['hd95'])}  "
            f"lesions: {lesions['tp']} detected, {lesions['fn']} missed, {lesions['fp']} false positive")


def run(args: argparse.Namespace, progress: Progress) -> int:
    images = read_inputs(args)
    result = evaluate_case(images["pred"], images["ref"], images["pre"], images["post"], images["intensity"],
                           bins=args.bins, both_empty_score=args.both_empty_score, progress=progress)
    columns = lesion_table_columns(enhancement=images["pre"] is not None, intensity=images["intensity"] is not None)
    with atomic_output_dir(args.out) as staging:
        write_json({**result["metrics"], "inputs": {"pred": args.pred, "ref": args.ref, "pre": args.pre,
                                                    "post": args.post, "image": args.image}},
                   staging / "metrics.json")
        write_csv(result["per_slice"], staging / "per_slice.csv")
        for name in ("lesions_pred", "lesions_ref"):
            write_csv(result[name], staging / f"{name}.csv", columns=columns)
        write_csv(result["lesion_matches"], staging / "lesion_matches.csv", columns=MATCH_COLUMNS)
    print(summary_line(result["metrics"]))
    print(f"written to {args.out}")
    return 0
