"""Where a model set's false-positive lesions lie on phantom tuning studies (never on held-out ones).

    python benchmarks/false_positives.py [--models DIR] [--phantom-seeds 3000 48] [--out false_positives.json]

The models segment each study at their lesion card's operating point; every predicted lesion that touches no
reference lesion is listed with the phantom tissue under most of it (enhancing parenchyma is ``gland``; lymph nodes,
the nipple, vessels and the heart have their own labels), its volume, its peak probability and the study's background
parenchymal enhancement (BPE) level. Then the false positives are counted by tissue and by BPE level (per study of
that level), so that the next change aims at what a model takes for lesions. Prints; asserts nothing.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tuning import segmented_studies, tuning_parser  # benchmarks/ is on the path of a script run from it

from BreastSegmentationLib.data.phantom_anatomy import Tissue
from BreastSegmentationLib.evaluation.lesions import label_lesions, match_lesion_labels
from BreastSegmentationLib.reports.tables import markdown_table


def false_positive_rows(lesions: sitk.Image, probability: sitk.Image, reference: sitk.Image,
                        tissue: sitk.Image) -> list[dict]:
    """One row per predicted lesion that touches no reference lesion: the tissue under most of it, its volume (mm3)
    and its peak probability."""
    labels = label_lesions(lesions > 0)
    matching = match_lesion_labels(labels, label_lesions(reference))
    label_array, tissue_array = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(tissue)
    probability_array = sitk.GetArrayViewFromImage(probability)
    rows = []
    for lesion in matching["lesions"]:
        if lesion["status"] != "fp":
            continue
        inside = label_array == lesion["id"]
        rows.append({"tissue": Tissue(int(np.bincount(tissue_array[inside]).argmax())).name.lower(),
                     "volume_mm3": round(lesion["volume_mm3"], 1),
                     "peak_probability": round(float(probability_array[inside].max()), 3)})
    return rows


def tally(rows: list[dict], studies_by_bpe: Counter) -> tuple[list[dict], list[dict]]:
    """False positives by tissue (most first), and by BPE level with the studies of that level."""
    by_tissue = [{"tissue": tissue, "false_positives": count}
                 for tissue, count in Counter(row["tissue"] for row in rows).most_common()]
    fp_by_bpe = Counter(row["bpe"] for row in rows)
    by_bpe = [{"bpe": level, "studies": studies, "false_positives": fp_by_bpe[level],
               "per_study": round(fp_by_bpe[level] / studies, 2)} for level, studies in sorted(studies_by_bpe.items())]
    return by_tissue, by_bpe


def main(argv: list[str] | None = None) -> int:
    parser = tuning_parser(__doc__.split("\n\n")[0], "also write every false positive and the counts as JSON")
    args = parser.parse_args(argv)
    rows, studies_by_bpe = [], Counter()
    for seed, case, result in segmented_studies(args):
        bpe = case.info["bpe"]["level"]
        studies_by_bpe[bpe] += 1
        found = false_positive_rows(result.lesions, result.probability, case.lesions, case.tissue)
        rows += [{"seed": seed, "bpe": bpe, **row} for row in found]
        print(f"seed {seed} ({bpe} BPE): {len(found)} false positives", flush=True)
    by_tissue, by_bpe = tally(rows, studies_by_bpe)
    print(f"{len(rows)} false positives in {args.phantom_seeds[1]} studies")
    print(markdown_table(by_tissue))
    print(markdown_table(by_bpe))
    if args.out:
        Path(args.out).write_text(json.dumps({"false_positives": rows, "by_tissue": by_tissue, "by_bpe": by_bpe},
                                             indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
