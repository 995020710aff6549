"""Choose a lesion model's threshold, minimum lesion volume and peak probability on validation or tuning studies
(never on held-out ones).

    python benchmarks/operating_point.py --models DIR --dataset data/phantom-lesions.csv [--peaks 0.7 0.9]
                                         [--out sweep.json]
    python benchmarks/operating_point.py --models DIR --phantom-seeds 3000 24 ...

The models run once on each validation study named by the lesion card (``training.val_patients``), or on phantom
studies generated from ``--phantom-seeds`` (a tuning set: seeds used neither in training, 1000-2001, nor by the
accuracy benchmark, 9000 and up; larger than a fold's validation studies and drawn as the held-out ones are); the
lesion probability is then thresholded and cleaned at every combination of ``--thresholds``, ``--min-volumes`` and
``--peaks`` (peaks below a threshold are skipped; on the pre-contrast grid, as the outputs are), and each is scored
as the accuracy benchmark scores held-out studies: lesion Dice, lesions over 20 mm3 detected, false-positive lesions
per study. Prints the table; the chosen combination goes into the card's ``threshold``, ``min_lesion_mm3`` and
``min_lesion_peak``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk
from accuracy import lesion_scores, summarise_lesions  # benchmarks/ is on the path of a script run from it

from BreastSegmentationLib.data.datasets import load_dataset
from BreastSegmentationLib.data.phantom import generate_case
from BreastSegmentationLib.inference.pipeline import ModelSet, load_models, segment_images
from BreastSegmentationLib.inference.postprocess import LesionCleaning, clean_lesion_mask
from BreastSegmentationLib.inference.runtime import configure_cpu_memory
from BreastSegmentationLib.reports.tables import markdown_table


def score(probability: sitk.Image, breast: sitk.Image, reference: sitk.Image, threshold: float,
          rules: LesionCleaning) -> dict:
    """The accuracy benchmark's lesion scores of one study at one operating point."""
    return lesion_scores(clean_lesion_mask(probability > threshold, breast, rules, probability), reference)


def validation_studies(models: ModelSet, dataset: str) -> Iterator[tuple[str, sitk.Image, sitk.Image, sitk.Image]]:
    """(name, pre, post, reference lesions) of the lesion card's validation patients found in ``dataset``."""
    validation = set(models.lesion.card.training.get("val_patients", []))
    records = [r for r in load_dataset(dataset, require=("lesions",)) if r.patient_id in validation]
    if not records:
        raise SystemExit("none of the lesion card's validation patients is in the dataset")
    for record in records:
        yield (record.case_id, sitk.ReadImage(str(record.pre)), sitk.ReadImage(str(record.post)),
               sitk.ReadImage(str(record.lesions)))


def phantom_studies(first: int, count: int) -> Iterator[tuple[str, sitk.Image, sitk.Image, sitk.Image]]:
    """(name, pre, post, reference lesions) of phantom studies drawn from ``count`` seeds from ``first`` on."""
    for seed in range(first, first + count):
        case = generate_case(seed)
        yield f"seed {seed}", case.pre, case.posts[0], case.lesions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True,
                        help="model folder (with --dataset, its lesion card lists val_patients)")
    studies = parser.add_mutually_exclusive_group(required=True)
    studies.add_argument("--dataset", help="the dataset the lesion model was trained on (its validation studies)")
    studies.add_argument("--phantom-seeds", type=int, nargs=2, metavar=("FIRST", "COUNT"),
                         help="phantom studies of these seeds instead")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--min-volumes", type=float, nargs="+", default=[10.0, 20.0, 40.0, 80.0])
    parser.add_argument("--peaks", type=float, nargs="+", default=[],
                        help="minimum peak probabilities of a kept lesion to try besides none")
    parser.add_argument("--out", help="also write the table as JSON")
    args = parser.parse_args(argv)
    configure_cpu_memory()  # as the breastseg command does
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    models = load_models(args.models, "auto")
    points = [(threshold, LesionCleaning(min_volume, min_peak_probability=peak)) for threshold, min_volume, peak
              in itertools.product(args.thresholds, args.min_volumes, [None, *args.peaks])
              if peak is None or peak > threshold]
    scores: list[list[dict]] = [[] for _ in points]
    studies = phantom_studies(*args.phantom_seeds) if args.phantom_seeds else validation_studies(models, args.dataset)
    for name, pre, post, reference in studies:
        result = segment_images(pre, post, models)
        for point_scores, (threshold, rules) in zip(scores, points):
            point_scores.append(score(result.probability, result.breast, reference, threshold, rules))
        print(f"{name}: done", flush=True)
    rows = [{"threshold": threshold, "min_lesion_mm3": rules.min_volume_mm3,
             "min_lesion_peak": rules.min_peak_probability, **summarise_lesions(point_scores)}
            for point_scores, (threshold, rules) in zip(scores, points)]
    print(f"{len(scores[0])} studies")
    print(markdown_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
