"""Accuracy of a model set on held-out phantom cases (seeds never used in training).

    python benchmarks/accuracy.py [--models DIR] [--cases 12] [--seed 9000] [--out accuracy.json]

Reports per case and overall: breast (BRS) Dice, lesion Dice, lesions over 20 mm3 detected, false-positive
lesions per case, and the issue's targets next to them. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastSegmentationLib.data.phantom import generate_case
from BreastSegmentationLib.evaluation.lesions import match_lesions
from BreastSegmentationLib.evaluation.metrics import segmentation_metrics
from BreastSegmentationLib.inference.pipeline import load_models, segment_images
from BreastSegmentationLib.reports.tables import markdown_table

TARGETS = {"breast_dice": 0.95, "lesion_dice": 0.75, "detected_over_20mm3": 0.90, "fp_per_case": 1.0}


def evaluate_case(seed: int, models) -> dict:
    case = generate_case(seed)
    result = segment_images(case.pre, case.posts[0], models)
    breast = segmentation_metrics(result.breast > 0, case.breast)
    lesions = segmentation_metrics(result.lesions > 0, case.lesions)
    matching = match_lesions(result.lesions > 0, case.lesions, bins=(20.0,))
    large = next(b for b in matching["bins"] if b["min_mm3"] >= 20.0)
    return {
        "seed": seed, "vendor": case.info["vendor"], "fat_sat": case.info["fat_sat"],
        "size": "x".join(map(str, case.pre.GetSize())), "breast_dice": breast["dice"], "lesion_dice": lesions["dice"],
        "lesions": len(case.info["lesions"]), "large_lesions": large["tp"] + large["fn"], "large_detected": large["tp"],
        "fp_lesions": matching["fp"], "seconds": round(sum(result.seconds.values()), 1),
    }


def summarise(rows: list[dict]) -> dict:
    with_lesions = [r for r in rows if r["lesions"] > 0]
    large = sum(r["large_lesions"] for r in rows)
    return {
        "cases": len(rows),
        "breast_dice": float(np.mean([r["breast_dice"] for r in rows])),
        "lesion_dice": float(np.mean([r["lesion_dice"] for r in with_lesions])) if with_lesions else None,
        "detected_over_20mm3": sum(r["large_detected"] for r in rows) / large if large else None,
        "fp_per_case": float(np.mean([r["fp_lesions"] for r in rows])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="model folder (default: the bundled models)")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=9000, help="first held-out seed (training used 1000-1039)")
    parser.add_argument("--out", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    models = load_models(args.models, "auto")
    rows = []
    for seed in range(args.seed, args.seed + args.cases):
        rows.append(evaluate_case(seed, models))
        print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows)
    print(markdown_table(rows))
    print(markdown_table([{"measure": k, "value": summary[k], "target": TARGETS.get(k)} for k in summary]))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "cases": rows, "targets": TARGETS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
