"""Choose the foci classifier's threshold and minimum blob score on tuning phantom studies (never on held-out ones).

    python benchmarks/foci_operating_point.py [--models DIR] [--phantom-seeds 3000 48]
                                              [--thresholds 0.95 0.99 0.999] [--min-scores 6 8 10]
                                              [--vetoes 0.3 0.5] [--lesion-thresholds 0.3 0.4]
                                              [--lesion-peaks 0.8 0.95] [--out sweep.json]
    python benchmarks/foci_operating_point.py --pool sweep_a.json sweep_b.json

Each study (seeds 3000 and up: used neither in training nor by the accuracy benchmark) is segmented once without
the foci search, the lesion model at its card's operating point; its candidates are scored once by the folder's foci
classifier, and each lesion the lesion model found gets its veto score (the classifier on two cubes); then foci are
grown at every combination of ``--thresholds`` and ``--min-scores``, lesions under each of ``--vetoes`` (if any;
"none" keeps them all) are dropped, and the study is scored as the accuracy benchmark scores held-out studies.
With ``--lesion-thresholds`` or ``--lesion-peaks``, the lesion model's operating point is swept too, since the veto
removes most of its false positives and may allow a looser one: its probability is thresholded and cleaned again at
each (on the pre-contrast grid, as ``operating_point.py`` does; the card's point is among them, so that all rows
are made alike), and the candidates and veto scores follow its lesions. Prints the table, the lesion model alone
first; the chosen combination (at most one false positive per study, then most lesions found, then highest Dice)
goes into the foci card's ``threshold``, ``preprocessing.min_score`` and ``preprocessing.veto_below``, and the
lesion card's ``threshold`` and ``min_lesion_peak``. About 30 s per study here; with nine lesion operating points,
about a minute per study in each of two processes of one thread. ``--pool`` prints the table of several ``--out``
files' studies together (sweeps of different seeds run side by side). Asserts nothing.
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
    cube_volumes,
    grow_foci,
    lesion_veto_scores,
    lps_arrays,
    mask_like,
    score_candidates,
    scored_volume,
)
from BreastSegmentationLib.inference.pipeline import SegmentationOptions, load_models, segment_images
from BreastSegmentationLib.inference.postprocess import LesionCleaning, clean_lesion_mask
from BreastSegmentationLib.inference.runtime import configure_cpu_memory
from BreastSegmentationLib.io.images import as_float32
from BreastSegmentationLib.reports.tables import markdown_table

COLUMNS = ("lesion_threshold", "lesion_peak", "threshold", "min_score", "veto_below")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="model folder with a foci card (default: the bundled models)")
    parser.add_argument("--phantom-seeds", type=int, nargs=2, metavar=("FIRST", "COUNT"), default=(3000, 48))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.95, 0.98, 0.99, 0.995, 0.998, 0.999])
    parser.add_argument("--min-scores", type=float, nargs="+", default=[6.0, 8.0, 10.0])
    parser.add_argument("--vetoes", type=lambda v: None if v == "none" else float(v), nargs="+", default=[None],
                        help="veto_below values to try; 'none' keeps the lesion model's lesions (default)")
    parser.add_argument("--lesion-thresholds", type=float, nargs="+",
                        help="lesion model thresholds to try (default: the card's)")
    parser.add_argument("--lesion-peaks", type=float, nargs="+",
                        help="lesion model minimum peak probabilities to try (default: the card's)")
    parser.add_argument("--out", help="also write the table as JSON")
    parser.add_argument("--pool", nargs="+", metavar="JSON", help="print the table of these --out files' studies")
    args = parser.parse_args(argv)
    if args.pool:
        print(markdown_table(pooled_rows(args.pool)))
        return 0
    configure_cpu_memory()  # as the breastseg command does
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    models = load_models(args.models, "auto")
    if models.foci is None:
        raise SystemExit("the model folder has no foci card")
    search = dataclasses.replace(FocusSearch.from_dict(models.foci.card.preprocessing),
                                 min_score=min(args.min_scores))
    card = models.lesion.card
    lesion_points = [(threshold, peak) for threshold, peak in itertools.product(
        args.lesion_thresholds or [card.threshold], args.lesion_peaks or [card.min_lesion_peak])
        if peak is None or peak > threshold]
    sweeps_lesions = args.lesion_thresholds is not None or args.lesion_peaks is not None
    foci_points = list(itertools.product(args.thresholds, args.min_scores, args.vetoes))
    points = [(*lesion_point, *foci_point) for lesion_point in lesion_points for foci_point in foci_points]
    scores: dict = {None: [], **{point: [] for point in points}}
    first, count = args.phantom_seeds
    for seed in range(first, first + count):
        case = generate_case(seed)
        result = segment_images(case.pre, case.posts[0], models, SegmentationOptions(foci=False))
        pre, post, breast, probability = lps_arrays(as_float32(case.pre), result.post_aligned, result.breast,
                                                    result.probability)
        spacing = case.pre.GetSpacing()
        scores[None].append(lesion_scores(result.lesions, case.lesions))
        min_voxels = result.min_lesion_mm3 / float(np.prod(spacing))
        for lesion_threshold, lesion_peak in lesion_points:
            labelled = clean_lesion_mask(result.probability > lesion_threshold, result.breast,
                                         LesionCleaning(result.min_lesion_mm3, min_peak_probability=lesion_peak),
                                         result.probability) if sweeps_lesions else result.lesions
            (lesions,) = lps_arrays(labelled)
            subtraction = post - pre
            channels = cube_volumes(pre, post, subtraction, models.foci.card.inputs)
            scored = scored_volume(search, subtraction, pre, dict(zip(models.foci.card.inputs, channels)))
            candidates = score_candidates(scored, breast > 0, lesions, spacing, models.foci.networks, models.device,
                                          search, channels, models.foci.card.test_time_mirroring)
            veto_scores = lesion_veto_scores(candidates, lesions, probability, spacing, models.foci.networks,
                                             models.device, search)
            for threshold, min_score, veto in foci_points:
                foci = grow_foci(candidates, breast.shape, spacing, search, threshold, min_voxels, min_score)
                vetoed = [label for label, score in veto_scores.items() if veto is not None and score < veto]
                kept = (lesions > 0) & ~np.isin(lesions, vetoed)
                scores[(lesion_threshold, lesion_peak, threshold, min_score, veto)].append(
                    lesion_scores(mask_like(kept | foci, case.pre), case.lesions))
        print(f"seed {seed}: {len(candidates.peaks)} candidates", flush=True)
    rows = [{**{name: point[i] if point else None for i, name in enumerate(COLUMNS)}, **summarise_lesions(found)}
            for point, found in scores.items()]
    print(markdown_table(rows))
    if args.out:  # with each study's scores, so that sweeps over several seed ranges can be pooled
        Path(args.out).write_text(json.dumps([{**row, "studies": found} for row, found in zip(rows, scores.values())],
                                             indent=2))
    return 0


def pooled_rows(paths: list[str]) -> list[dict]:
    """One row per operating point of the ``--out`` files, scored on all their studies together."""
    studies: dict = {}
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            studies.setdefault(tuple(row[name] for name in COLUMNS), []).extend(row["studies"])
    return [{**dict(zip(COLUMNS, point)), "studies": len(found), **summarise_lesions(found)}
            for point, found in studies.items()]


if __name__ == "__main__":
    sys.exit(main())
