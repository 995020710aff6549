"""Which lesions a model set misses on phantom tuning studies (never on held-out ones), and what they are.

    python benchmarks/missed_lesions.py [--models DIR] [--phantom-seeds 3000 48] [--out missed.json]

The models segment each study at their cards' operating point. Every reference lesion of at least 20 mm3 is listed
with what the phantom drew there (type, diameter, conspicuity: its enhancement above the gland's), its volume, the
highest lesion probability inside it (below the lesion card's threshold the network did not see it; between the
threshold and the peak rule it saw it and was unsure) and whether a predicted lesion touches it, with the study's
background parenchymal enhancement (BPE) level and fat saturation. Then the lesions are counted by type and size
(20-150 mm3 and larger) with how many of each were missed, and again by the study's fat saturation and size (small
lesions hide in the noisier subtraction of studies without it), so that the next change aims at what the models
miss: the counterpart of false_positives.py.

Each lesion also gets its blob score (the foci search's difference-of-Gaussians z-score of the subtraction,
inference/foci.py, at the search's default scales, which the bundled card keeps) and how many blob peaks of its
study's breast that lie away from every reference lesion score as high (``false_peaks_as_high``): 0 makes it the
most conspicuous blob of its study, and a lesion with tens of such peaks stands no higher above the breast's own
texture than they do. The last table gives the median of that count by size and whether the lesion was found.
Prints; asserts nothing.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from accuracy import SMALL_LESION_MM3  # benchmarks/ is on the path of a script run from it
from scipy import ndimage
from tuning import segmented_studies, tuning_parser

from BreastSegmentationLib.evaluation.lesions import label_lesions, match_lesion_labels
from BreastSegmentationLib.inference.foci import FocusSearch, blob_score, candidate_peaks
from BreastSegmentationLib.reports.tables import markdown_table

#: Reference lesions under this volume are counted in no detection share (benchmarks/accuracy.py).
MIN_LESION_MM3 = 20.0
#: Blob peaks above this z-score are counted against a lesion (the foci search proposes only those above 10).
PEAK_FLOOR = 2.0
#: Peaks this many voxels or closer to a reference lesion belong to it rather than to the breast's texture.
LESION_REACH_VOXELS = 2


def drawn_lesion(labels: np.ndarray, label: int, drawn: list[dict]) -> dict:
    """The phantom's description (``case.info["lesions"]``) of the lesion whose centre lies in ``label`` of the
    (z, y, x) reference labels; an empty one when no centre does (lesions drawn into one another)."""
    for lesion in drawn:
        x, y, z = lesion["centre_index"]
        if labels[z, y, x] == label:
            return lesion
    return {}


def blob_ranks(subtraction: sitk.Image, breast: sitk.Image, labels: np.ndarray,
               search: FocusSearch = FocusSearch()) -> dict[int, dict]:
    """For each label of the (z, y, x) reference ``labels`` (on the subtraction's grid): its highest blob score and
    the number of blob peaks inside ``breast``, away from every label, that score at least as high."""
    spacing = subtraction.GetSpacing()
    inside = sitk.GetArrayViewFromImage(breast) > 0
    score = blob_score(sitk.GetArrayFromImage(subtraction), inside, spacing, search)
    peaks = candidate_peaks(score, inside, spacing, search, min_score=PEAK_FLOOR)
    near_lesion = ndimage.binary_dilation(labels > 0, iterations=LESION_REACH_VOXELS)
    false_scores = score[tuple(peaks[~near_lesion[tuple(peaks.T)]].T)]
    ids = np.unique(labels[labels > 0])
    highest = ndimage.maximum(score, labels, ids) if len(ids) else []
    return {int(label): {"blob_score": round(float(best), 1), "false_peaks_as_high": int((false_scores >= best).sum())}
            for label, best in zip(ids, highest)}


def reference_rows(lesions: sitk.Image, probability: sitk.Image, reference: sitk.Image, drawn: list[dict],
                   subtraction: sitk.Image | None = None, breast: sitk.Image | None = None) -> list[dict]:
    """One row per reference lesion of at least :data:`MIN_LESION_MM3`: what was drawn, its volume (mm3), the
    highest ``probability`` inside it and whether a lesion of ``lesions`` touches it; given the study's
    ``subtraction`` and ``breast``, also its :func:`blob_ranks`."""
    reference_labels = label_lesions(reference)
    matching = match_lesion_labels(label_lesions(lesions > 0), reference_labels)
    labels, probability_array = sitk.GetArrayViewFromImage(reference_labels), sitk.GetArrayViewFromImage(probability)
    ranks = {} if subtraction is None else blob_ranks(subtraction, breast, labels)
    rows = []
    for lesion in matching["lesions"]:
        if lesion["source"] != "ref" or lesion["volume_mm3"] < MIN_LESION_MM3:
            continue
        described = drawn_lesion(labels, lesion["id"], drawn)
        rows.append({"type": described.get("type", "unknown"), "diameter_mm": described.get("diameter_mm"),
                     "conspicuity": described.get("conspicuity"), "volume_mm3": round(lesion["volume_mm3"], 1),
                     "peak_probability": round(float(probability_array[labels == lesion["id"]].max()), 3),
                     "found": lesion["status"] == "tp", **ranks.get(lesion["id"], {})})
    return rows


def size_class(volume_mm3: float) -> str:
    return f"{MIN_LESION_MM3:g}-{SMALL_LESION_MM3:g} mm3" if volume_mm3 <= SMALL_LESION_MM3 else \
        f"over {SMALL_LESION_MM3:g} mm3"


def tally(rows: list[dict], by: str = "type") -> list[dict]:
    """Lesions and misses by ``by`` (a column of the rows: the lesion's type, the study's fat saturation) and size
    class, the kinds missed most first."""
    kinds = Counter((row[by], size_class(row["volume_mm3"])) for row in rows)
    missed = Counter((row[by], size_class(row["volume_mm3"])) for row in rows if not row["found"])
    return [{by: kind, "size": size, "lesions": count, "missed": missed[(kind, size)]}
            for (kind, size), count in sorted(kinds.items(), key=lambda item: (-missed[item[0]], str(item[0])))]


def blob_rank_tally(rows: list[dict]) -> list[dict]:
    """By size class and whether they were found: lesions and the median of their ``false_peaks_as_high``."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for row in rows:
        groups.setdefault((size_class(row["volume_mm3"]), row["found"]), []).append(row["false_peaks_as_high"])
    return [{"size": size, "found": found, "lesions": len(counts),
             "median_false_peaks_as_high": float(np.median(counts))}
            for (size, found), counts in sorted(groups.items())]


def main(argv: list[str] | None = None) -> int:
    args = tuning_parser(__doc__.split("\n\n")[0], "also write every lesion and the counts as JSON").parse_args(argv)
    rows = []
    for seed, case, result in segmented_studies(args):
        subtraction = sitk.Cast(case.posts[0], sitk.sitkFloat32) - sitk.Cast(case.pre, sitk.sitkFloat32)
        found = reference_rows(result.lesions, result.probability, case.lesions, case.info["lesions"], subtraction,
                               result.breast)
        rows += [{"seed": seed, "bpe": case.info["bpe"]["level"], "fat_sat": case.info["fat_sat"], **row}
                 for row in found]
        print(f"seed {seed}: {sum(not row['found'] for row in found)} of {len(found)} lesions missed", flush=True)
    missed = [row for row in rows if not row["found"]]
    print(f"{len(missed)} of {len(rows)} lesions of {MIN_LESION_MM3:g} mm3 or more missed in {args.phantom_seeds[1]} studies")
    print(markdown_table(missed))
    print(markdown_table(tally(rows)))
    print(markdown_table(tally(rows, by="fat_sat")))
    print(markdown_table(blob_rank_tally(rows)))
    if args.out:
        Path(args.out).write_text(json.dumps({"lesions": rows, "by_kind": tally(rows),
                                              "by_fat_saturation": tally(rows, by="fat_sat"),
                                              "by_blob_rank": blob_rank_tally(rows)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
