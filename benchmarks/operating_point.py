"""Choose a lesion model's threshold and minimum lesion volume on its validation studies (never on held-out ones).

    python benchmarks/operating_point.py --models DIR --dataset data/phantom-lesions.csv [--out sweep.json]

The models run once on each validation study named by the lesion card (``training.val_patients``); the lesion
probability is then thresholded and cleaned at every pair of ``--thresholds`` and ``--min-volumes`` (on the
pre-contrast grid, as the outputs are), and each pair is scored as the accuracy benchmark scores held-out studies:
lesion Dice, lesions over 20 mm3 detected, false-positive lesions per study. Prints the table; the chosen pair goes
into the card's ``threshold`` and ``min_lesion_mm3``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import SimpleITK as sitk
from accuracy import lesion_scores, summarise_lesions  # benchmarks/ is on the path of a script run from it

from BreastSegmentationLib.data.datasets import load_dataset
from BreastSegmentationLib.inference.pipeline import load_models, segment_images
from BreastSegmentationLib.inference.postprocess import LesionCleaning, clean_lesion_mask
from BreastSegmentationLib.reports.tables import markdown_table


def score(probability: sitk.Image, breast: sitk.Image, reference: sitk.Image, threshold: float,
          min_volume_mm3: float) -> dict:
    """The accuracy benchmark's lesion scores of one study at one operating point."""
    return lesion_scores(clean_lesion_mask(probability > threshold, breast, LesionCleaning(min_volume_mm3)), reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="model folder whose lesion card lists val_patients")
    parser.add_argument("--dataset", required=True, help="the dataset the lesion model was trained on")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--min-volumes", type=float, nargs="+", default=[10.0, 20.0, 40.0, 80.0])
    parser.add_argument("--out", help="also write the table as JSON")
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    models = load_models(args.models, "auto")
    validation = set(models.lesion.card.training.get("val_patients", []))
    records = [r for r in load_dataset(args.dataset, require=("lesions",)) if r.patient_id in validation]
    if not records:
        parser.error("none of the lesion card's validation patients is in the dataset")
    pairs = list(itertools.product(args.thresholds, args.min_volumes))
    scores: dict[tuple[float, float], list[dict]] = {pair: [] for pair in pairs}
    for record in records:
        result = segment_images(sitk.ReadImage(str(record.pre)), sitk.ReadImage(str(record.post)), models)
        reference = sitk.ReadImage(str(record.lesions))
        for threshold, min_volume in pairs:
            scores[threshold, min_volume].append(score(result.probability, result.breast, reference, threshold,
                                                       min_volume))
        print(f"{record.case_id}: done", flush=True)
    rows = [{"threshold": t, "min_lesion_mm3": v, **summarise_lesions(scores[t, v])} for t, v in pairs]
    print(f"{len(records)} validation studies")
    print(markdown_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
