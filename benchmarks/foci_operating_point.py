"""Choose the foci classifier's threshold and minimum blob score on tuning phantom studies (never on held-out ones).

    python benchmarks/foci_operating_point.py [--models DIR] [--phantom-seeds 3000 48]
                                              [--thresholds 0.95 0.99 0.999] [--min-scores 6 8 10]
                                              [--vetoes 0.3 0.5] [--out sweep.json]

Each study (seeds 3000 and up: used neither in training nor by the accuracy benchmark) is segmented once without
the foci search, the lesion model at its card's operating point; its candidates are scored once by the folder's foci
classifier, and each lesion the lesion model found gets its veto score (the classifier on two cubes); then foci are
grown at every combination of ``--thresholds`` and ``--min-scores``, lesions under each of ``--vetoes`` (if any;
"none" keeps them all) are dropped, and the study is scored as the accuracy benchmark scores held-out studies.
Prints the table, the lesion model alone first; the chosen combination (at most one false positive per study, then
most lesions found, then highest Dice) goes into the foci card's ``threshold``, ``preprocessing.min_score`` and
``preprocessing.veto_below``. About 30 s per study here. Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from accuracy import lesion_scores, summarise_lesions  # benchmarks/ is on the path of a script run from it

from BreastSegmentationLib.data.phantom import generate_case
from BreastSegmentationLib.inference.foci import (
    FocusSearch,
    grow_foci,
    lesion_veto_scores,
    lps_arrays,
    mask_like,
    score_candidates,
)
from BreastSegmentationLib.inference.pipeline import SegmentationOptions, load_models, segment_images
from BreastSegmentationLib.inference.runtime import configure_cpu_memory
from BreastSegmentationLib.io.images import as_float32
from BreastSegmentationLib.reports.tables import markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="model folder with a foci card (default: the bundled models)")
    parser.add_argument("--phantom-seeds", type=int, nargs=2, metavar=("FIRST", "COUNT"), default=(3000, 48))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.95, 0.98, 0.99, 0.995, 0.998, 0.999])
    parser.add_argument("--min-scores", type=float, nargs="+", default=[6.0, 8.0, 10.0])
    parser.add_argument("--vetoes", type=lambda v: None if v == "none" else float(v), nargs="+", default=[None],
                        help="veto_below values to try; 'none' keeps the lesion model's lesions (default)")
    parser.add_argument("--out", help="also write the table as JSON")
    args = parser.parse_args(argv)
    configure_cpu_memory()  # as the breastseg command does
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    models = load_models(args.models, "auto")
    if models.foci is None:
        raise SystemExit("the model folder has no foci card")
    search = dataclasses.replace(FocusSearch.from_dict(models.foci.card.preprocessing),
                                 min_score=min(args.min_scores))
    points = list(itertools.product(args.thresholds, args.min_scores, args.vetoes))
    scores: dict = {None: [], **{point: [] for point in points}}
    first, count = args.phantom_seeds
    for seed in range(first, first + count):
        case = generate_case(seed)
        result = segment_images(case.pre, case.posts[0], models, SegmentationOptions(foci=False))
        pre, post, breast, lesions, probability = lps_arrays(as_float32(case.pre), result.post_aligned,
                                                             result.breast, result.lesions, result.probability)
        spacing = case.pre.GetSpacing()
        candidates = score_candidates(post - pre, breast > 0, lesions, spacing, models.foci.networks, models.device,
                                      search)
        veto_scores = lesion_veto_scores(candidates, post - pre, lesions, probability, spacing,
                                         models.foci.networks, models.device, search)
        scores[None].append(lesion_scores(result.lesions, case.lesions))
        min_voxels = result.min_lesion_mm3 / float(np.prod(spacing))
        for threshold, min_score, veto in points:
            foci = grow_foci(candidates, breast.shape, spacing, search, threshold, min_voxels, min_score)
            vetoed = [label for label, score in veto_scores.items() if veto is not None and score < veto]
            kept = (lesions > 0) & ~np.isin(lesions, vetoed)
            scores[(threshold, min_score, veto)].append(lesion_scores(mask_like(kept | foci, case.pre),
                                                                      case.lesions))
        print(f"seed {seed}: {len(candidates.peaks)} candidates", flush=True)
    rows = [{"threshold": point[0] if point else None, "min_score": point[1] if point else None,
             "veto_below": point[2] if point else None, **summarise_lesions(found)} for point, found in scores.items()]
    print(markdown_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
