"""Accuracy of a model set on held-out phantom cases (seeds never used in training).

    python benchmarks/accuracy.py [--models DIR] [--cases 12] [--seed 9000] [--motion-mm 0] [--no-motion-correction]
                                  [--uptake 1] [--noise 1] [--sagittal SLICE_MM | --reslice SLICE_MM | --tilt DEGREES]
                                  [--min-lesion-peak P]
                                  [--mixed-precision] [--out accuracy.json]
    python benchmarks/accuracy.py --pool held-9000.json held-9100.json
    python benchmarks/accuracy.py --before held-9000.json held-9100.json --after new-9000.json new-9100.json

Reports per case and overall: breast (BRS) Dice, lesion Dice, lesions over 20 mm3 detected, false-positive lesions
per case, and the issue's targets next to them, with 95 % intervals of the lesion figures over studies (how far
another draw of as many studies could move them); and how much of the predicted breast lies on the phantom's heart
muscle (a breast region must leave the strongly enhancing heart out). Prints; asserts nothing. ``--motion-mm`` moves
the post-contrast image along the anterior-posterior axis before segmenting, as a patient breathing or settling
between the phases does (the phantom's own motion is under a voxel), to show how the models bear misregistration.
``--uptake`` multiplies the contrast uptake of every tissue (post = pre + factor (post - pre)), as a protocol with
another contrast dose or an earlier or later first post-contrast phase does, to show how the models bear that.
``--noise`` raises the noise of both phases by a factor, as a scanner of lower signal-to-noise ratio would.
``--sagittal`` resamples both phases onto a sagittal grid (0.8 mm in-plane, slices ``SLICE_MM`` apart from the
patient's right to left), as sagittal DCE protocols acquire, and scores the result on the study's own grid: the
models were trained on axial studies only. ``--reslice`` resamples both phases onto axial slices ``SLICE_MM`` apart,
as scanners that interpolate slices reconstruct them (GE's ZIP2 halves the spacing). ``--tilt`` resamples them onto
a grid of the study's spacing turned about the left-right axis, as an oblique prescription acquires a patient lying
straight; the models were trained on studies whose axes are the patient's. ``--min-lesion-peak`` replaces the lesion
card's peak rule, as ``breastseg segment --min-lesion-peak`` does, and ``--mixed-precision`` runs the networks as
``breastseg segment --mixed-precision`` does. ``--pool`` prints the figures of the studies of several ``--out``
files together (the README's 48 held-out studies are two runs of 24); ``--before`` and ``--after`` compare two model
sets study by study, with 95 % intervals of the differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import stats

from BreastSegmentationLib.data.phantom import PhantomCase, generate_case
from BreastSegmentationLib.data.phantom_anatomy import Tissue
from BreastSegmentationLib.evaluation.lesions import match_lesions
from BreastSegmentationLib.evaluation.metrics import mask_array, overlap_counts, scores_from_counts, segmentation_metrics
from BreastSegmentationLib.inference.pipeline import SegmentationOptions, load_models, segment_images
from BreastSegmentationLib.inference.runtime import configure_cpu_memory
from BreastSegmentationLib.io.images import same_geometry
from BreastSegmentationLib.reports.tables import markdown_table

TARGETS = {"breast_dice": 0.95, "lesion_dice": 0.75, "detected_over_20mm3": 0.90, "fp_per_case": 1.0}


#: Reference lesions from 20 mm3 up to this volume are the small ones (foci up to about 6.5 mm across), reported apart.
SMALL_LESION_MM3 = 150.0


def lesion_scores(lesions: sitk.Image, reference: sitk.Image) -> dict:
    """Lesion Dice (from voxel counts: surface distances are not needed here), reference lesions, those over
    20 mm3 and how many of them were found (and of those up to 150 mm3), and false-positive lesions of one study."""
    matching = match_lesions(lesions > 0, reference, bins=(20.0, SMALL_LESION_MM3))
    small, larger = (b for b in matching["bins"] if b["min_mm3"] >= 20.0)
    dice = scores_from_counts(*overlap_counts(mask_array(lesions > 0), mask_array(reference)))["dice"]
    return {"lesion_dice": float(dice), "lesions": matching["tp"] + matching["fn"],
            "large_lesions": small["tp"] + small["fn"] + larger["tp"] + larger["fn"],
            "large_detected": small["tp"] + larger["tp"], "small_lesions": small["tp"] + small["fn"],
            "small_detected": small["tp"], "fp_lesions": matching["fp"]}


def summarise_lesions(rows: list[dict]) -> dict:
    """Mean lesion Dice over studies with lesions, share of large lesions found (and of the small ones among them:
    20-150 mm3), false positives per study."""
    with_lesions = [r for r in rows if r["lesions"] > 0]
    large, small = sum(r["large_lesions"] for r in rows), sum(r["small_lesions"] for r in rows)
    return {
        "lesion_dice": float(np.mean([r["lesion_dice"] for r in with_lesions])) if with_lesions else None,
        "detected_over_20mm3": sum(r["large_detected"] for r in rows) / large if large else None,
        "detected_20_150mm3": sum(r["small_detected"] for r in rows) / small if small else None,
        "fp_per_case": float(np.mean([r["fp_lesions"] for r in rows])),
    }


def bootstrap_interval(samples: tuple[np.ndarray, ...], statistic, resamples: int = 2000,
                       seed: int = 0) -> list[float] | None:
    """95 % percentile-bootstrap interval of ``statistic(*samples, axis)``, resampling the samples' rows (studies)
    together; None for fewer than two studies."""
    if len(samples[0]) < 2:
        return None
    result = stats.bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=resamples,
                             method="percentile", random_state=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def _mean(values: np.ndarray, axis: int) -> np.ndarray:
    return values.mean(axis=axis)


def _share(hits: np.ndarray, counts: np.ndarray, axis: int) -> np.ndarray:
    return hits.sum(axis=axis) / counts.sum(axis=axis)


def lesion_intervals(rows: list[dict]) -> dict:
    """95 % intervals of :func:`summarise_lesions`' lesion Dice, share of large lesions found and false positives
    per study, resampling whole studies (a study's lesions share its acquisition, so lesions are not independent
    draws). None where fewer than two studies carry the figure."""
    dice = np.array([r["lesion_dice"] for r in rows if r["lesions"] > 0])
    with_large = [r for r in rows if r["large_lesions"] > 0]
    found = np.array([r["large_detected"] for r in with_large]), np.array([r["large_lesions"] for r in with_large])
    return {"lesion_dice": bootstrap_interval((dice,), _mean),
            "detected_over_20mm3": bootstrap_interval(found, _share),
            "fp_per_case": bootstrap_interval((np.array([r["fp_lesions"] for r in rows], float),), _mean)}


def paired_differences(before: list[dict], after: list[dict]) -> list[dict]:
    """``after`` minus ``before`` on the studies both scored (by seed): lesion Dice, share of large lesions found
    and false positives per study, each with the 95 % interval of the difference from resampling those studies.
    Paired, so that what the studies share (how hard each is) cancels: an interval that holds 0 is no difference
    these studies can tell from chance."""
    by_seed = {row["seed"]: row for row in before}
    pairs = [(by_seed[row["seed"]], row) for row in after if row["seed"] in by_seed]
    if not pairs:
        raise SystemExit("the two sets of runs share no study (seed)")
    with_lesions = [(a, b) for a, b in pairs if a["lesions"] > 0]
    dice = np.array([b["lesion_dice"] - a["lesion_dice"] for a, b in with_lesions])
    found = (np.array([b["large_detected"] - a["large_detected"] for a, b in pairs], float),
             np.array([a["large_lesions"] for a, _ in pairs], float))
    false_positives = np.array([b["fp_lesions"] - a["fp_lesions"] for a, b in pairs], float)
    before_summary = summarise_lesions([a for a, _ in pairs])
    after_summary = summarise_lesions([b for _, b in pairs])
    rows = []
    for measure, samples, statistic in (("lesion_dice", (dice,), _mean),
                                        ("detected_over_20mm3", found, _share),
                                        ("fp_per_case", (false_positives,), _mean)):
        rows.append({"measure": measure, "studies": len(samples[0]), "before": before_summary[measure],
                     "after": after_summary[measure], "difference": float(statistic(*samples, axis=0)),
                     "95 % interval": interval_text(bootstrap_interval(samples, statistic))})
    return rows


def interval_text(interval: list[float] | None) -> str:
    return f"{interval[0]:.3f} to {interval[1]:.3f}" if interval else ""


def heart_in_breast_mm3(breast: sitk.Image, tissue: sitk.Image) -> float:
    """Volume (mm3) of the predicted ``breast`` on the phantom's heart muscle (``tissue``, same grid). The
    muscle encloses the chambers, so a breast region reaching into the heart reaches it."""
    on_heart = (sitk.GetArrayViewFromImage(breast) > 0) & (sitk.GetArrayViewFromImage(tissue) == Tissue.MYOCARDIUM)
    return float(on_heart.sum() * np.prod(breast.GetSpacing()))


def moved(image: sitk.Image, anterior_posterior_mm: float) -> sitk.Image:
    """``image`` with its content moved along the patient's anterior-posterior axis (LPS y), on the same grid."""
    if not anterior_posterior_mm:
        return image
    shift = sitk.TranslationTransform(3, (0.0, -anterior_posterior_mm, 0.0))
    return sitk.Resample(image, image, shift, sitk.sitkLinear, 0.0, image.GetPixelID())


#: Median of a Rayleigh distribution (the magnitude of complex noise on no signal) over its sigma: sqrt(2 ln 2).
RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))


def with_noise(phases: tuple[sitk.Image, ...], air: sitk.Image, factor: float,
               seed: int = 0) -> tuple[sitk.Image, ...]:
    """``phases`` with their noise raised ``factor`` times: complex Gaussian noise of sigma ``sqrt(factor**2 - 1)``
    times theirs drawn anew and added to each magnitude (independent noises add in quadrature), in each phase's pixel
    type (rounded for integer types, as scanners store them). The phases' own noise sigma is read from the median of
    the ``air`` voxels (a mask), Rayleigh there, as scanners' noise is measured."""
    if factor == 1.0:
        return phases
    rng = np.random.default_rng(seed)
    in_air = sitk.GetArrayViewFromImage(air) > 0
    noisier = []
    for phase in phases:
        stored = sitk.GetArrayViewFromImage(phase)
        values = stored.astype(np.float32)
        sigma = float(np.median(values[in_air])) / RAYLEIGH_MEDIAN * np.sqrt(factor**2 - 1.0)
        real = values + rng.normal(0.0, sigma, values.shape).astype(np.float32)
        magnitude = np.hypot(real, rng.normal(0.0, sigma, values.shape).astype(np.float32))
        image = sitk.GetImageFromArray(np.rint(magnitude) if np.issubdtype(stored.dtype, np.integer) else magnitude)
        image.CopyInformation(phase)
        noisier.append(sitk.Cast(image, phase.GetPixelID()))
    return tuple(noisier)


def with_uptake(pre: sitk.Image, post: sitk.Image, factor: float) -> sitk.Image:
    """``post`` with every voxel's enhancement over ``pre`` multiplied by ``factor``, in ``post``'s pixel type."""
    if factor == 1.0:
        return post
    pre, scaled = sitk.Cast(pre, sitk.sitkFloat32), sitk.Cast(post, sitk.sitkFloat32)
    return sitk.Cast(sitk.Clamp(pre + factor * (scaled - pre), lowerBound=0.0), post.GetPixelID())


#: In-plane spacing (mm) of the sagittal grid of ``--sagittal``.
SAGITTAL_IN_PLANE_MM = 0.8
#: The sagittal grid's axes in LPS: index i steps anterior -> posterior, j superior -> inferior, k right -> left.
SAGITTAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def covering_grid(image: sitk.Image, direction: np.ndarray, spacing: tuple[float, ...]) -> sitk.Image:
    """An empty grid of ``direction`` (3 x 3, its columns the axes in LPS) and ``spacing`` that covers ``image``."""
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([end * (size - 1) for end, size in
                                                                       zip(ends, image.GetSize())])
                        for ends in np.ndindex(2, 2, 2)])
    along = corners @ direction  # each corner's coordinate along the grid's three axes
    spacing = np.asarray(spacing, dtype=float)
    grid = sitk.Image([int(n) for n in np.ceil((along.max(0) - along.min(0)) / spacing) + 1], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((direction @ along.min(0)).tolist())
    return grid


def sagittal_grid(image: sitk.Image, slice_mm: float) -> sitk.Image:
    """An empty sagittal grid (:data:`SAGITTAL_DIRECTION`) that covers ``image``."""
    return covering_grid(image, SAGITTAL_DIRECTION, (SAGITTAL_IN_PLANE_MM, SAGITTAL_IN_PLANE_MM, slice_mm))


def tilted_grid(image: sitk.Image, degrees: float) -> sitk.Image:
    """An empty grid of ``image``'s spacing, its axes turned by ``degrees`` about the patient's left-right axis (an
    oblique axial prescription, or a patient lying with the head lower or higher), that covers ``image``."""
    angle = np.radians(degrees)
    about_left_right = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)],
                                 [0.0, np.sin(angle), np.cos(angle)]])
    direction = about_left_right @ np.array(image.GetDirection()).reshape(3, 3)
    return covering_grid(image, direction, image.GetSpacing())


def resliced_grid(image: sitk.Image, slice_mm: float) -> sitk.Image:
    """An empty grid of ``image``'s rows and columns with slices ``slice_mm`` apart over the same extent."""
    columns, rows, slices = image.GetSize()
    spacing = image.GetSpacing()
    grid = sitk.Image([columns, rows, int((slices - 1) * spacing[2] / slice_mm) + 1], sitk.sitkFloat32)
    grid.SetSpacing((spacing[0], spacing[1], slice_mm))
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    return grid


def as_acquired(pre: sitk.Image, post: sitk.Image, sagittal_mm: float = 0.0, reslice_mm: float = 0.0,
                tilt_degrees: float = 0.0) -> tuple[sitk.Image, sitk.Image]:
    """The two phases as given, or resampled (linearly) onto a sagittal grid with slices ``sagittal_mm`` apart, onto
    axial slices ``reslice_mm`` apart, or onto a grid tilted by ``tilt_degrees``."""
    if sagittal_mm:
        grid = sagittal_grid(pre, sagittal_mm)
    elif reslice_mm:
        grid = resliced_grid(pre, reslice_mm)
    elif tilt_degrees:
        grid = tilted_grid(pre, tilt_degrees)
    else:
        return pre, post
    return tuple(sitk.Resample(sitk.Cast(phase, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
                 for phase in (pre, post))


def on_grid(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``labels`` (nearest neighbour) on ``reference``'s grid; itself when it lies there already."""
    if same_geometry(labels, reference):
        return labels
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)


@dataclass(frozen=True)
class Perturbation:
    """How a phantom study is changed before it is segmented (the command line's options; defaults: as drawn)."""

    motion_mm: float = 0.0
    uptake: float = 1.0
    noise: float = 1.0
    sagittal_mm: float = 0.0
    reslice_mm: float = 0.0
    tilt_degrees: float = 0.0


def perturbed(case: PhantomCase, change: Perturbation, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """The case's pre- and first post-contrast phases with ``change`` applied: uptake, motion, noise, then the grid."""
    phases = case.pre, moved(with_uptake(case.pre, case.posts[0], change.uptake), change.motion_mm)
    noisier = with_noise(phases, case.tissue == Tissue.AIR, change.noise, seed)
    return as_acquired(*noisier, change.sagittal_mm, change.reslice_mm, change.tilt_degrees)


def evaluate_case(seed: int, models, options: SegmentationOptions | None = None,
                  change: Perturbation = Perturbation()) -> dict:
    case = generate_case(seed)
    pre, post = perturbed(case, change, seed)
    result = segment_images(pre, post, models, options)
    breast = on_grid(result.breast, case.pre)
    return {
        "seed": seed, "vendor": case.info["vendor"], "fat_sat": case.info["fat_sat"],
        "size": "x".join(map(str, pre.GetSize())),
        "breast_dice": segmentation_metrics(breast > 0, case.breast)["dice"],
        "heart_mm3": round(heart_in_breast_mm3(breast, case.tissue), 1),
        **lesion_scores(on_grid(result.lesions, case.pre), case.lesions),
        "seconds": round(sum(result.seconds.values()), 1),
    }


def summarise(rows: list[dict]) -> dict:
    return {"cases": len(rows), "breast_dice": float(np.mean([r["breast_dice"] for r in rows])),
            "studies_with_breast_on_heart": sum(r["heart_mm3"] > 0 for r in rows),
            "most_breast_on_heart_mm3": max(r["heart_mm3"] for r in rows), **summarise_lesions(rows)}


def studies_in(paths: list[str]) -> list[dict]:
    """The per-study rows of these ``--out`` files."""
    return [row for path in paths for row in json.loads(Path(path).read_text())["cases"]]


def print_summary(rows: list[dict]) -> tuple[dict, dict]:
    """Print the figures of ``rows`` (studies) with their 95 % intervals and the targets; return both."""
    summary, intervals = summarise(rows), lesion_intervals(rows)
    print(markdown_table([{"measure": k, "value": summary[k], "95 % interval": interval_text(intervals.get(k)),
                           "target": TARGETS.get(k)} for k in summary]))
    return summary, intervals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="model folder (default: the bundled models)")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=9000, help="first held-out seed (training used 1000-1039)")
    parser.add_argument("--motion-mm", type=float, default=0.0,
                        help="move the post-contrast image this far along the anterior-posterior axis (default 0)")
    parser.add_argument("--no-motion-correction", dest="motion_correction", action="store_false",
                        help="segment without the pipeline's motion correction")
    parser.add_argument("--uptake", type=float, default=1.0,
                        help="multiply the contrast uptake (post - pre) of every tissue by this factor (default 1)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="multiply the noise of both phases by this factor, 1 or more (default 1)")
    acquisition = parser.add_mutually_exclusive_group()
    acquisition.add_argument("--sagittal", type=float, default=0.0, metavar="SLICE_MM",
                             help="segment the study resampled onto a sagittal grid with slices this far apart (mm)")
    acquisition.add_argument("--reslice", type=float, default=0.0, metavar="SLICE_MM",
                             help="segment the study resampled onto axial slices this far apart (mm)")
    acquisition.add_argument("--tilt", type=float, default=0.0, metavar="DEGREES",
                             help="segment the study resampled onto a grid turned this far about the left-right "
                                  "axis (an oblique prescription)")
    parser.add_argument("--min-lesion-peak", type=float,
                        help="keep lesions whose probability reaches this somewhere (default: the lesion card's)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="the breast and lesion networks in mixed precision, as `breastseg segment "
                             "--mixed-precision`")
    parser.add_argument("--out", help="also write the figures as JSON")
    parser.add_argument("--pool", nargs="+", metavar="JSON", help="print the figures of these --out files' studies")
    parser.add_argument("--before", nargs="+", metavar="JSON",
                        help="with --after: compare two sets of --out files study by study (after minus before)")
    parser.add_argument("--after", nargs="+", metavar="JSON")
    args = parser.parse_args(argv)
    if args.pool:
        print_summary(studies_in(args.pool))
        return 0
    if args.before or args.after:
        if not (args.before and args.after):
            parser.error("--before and --after go together")
        print(markdown_table(paired_differences(studies_in(args.before), studies_in(args.after))))
        return 0
    if args.noise < 1.0:
        parser.error("--noise must be 1 or more: noise can be added, not taken away")
    configure_cpu_memory()  # as the breastseg command does
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    models = load_models(args.models, "auto")
    options = SegmentationOptions(motion_correction=args.motion_correction, min_lesion_peak=args.min_lesion_peak,
                                  mixed_precision=args.mixed_precision)
    change = Perturbation(args.motion_mm, args.uptake, args.noise, args.sagittal, args.reslice, args.tilt)
    rows = []
    for seed in range(args.seed, args.seed + args.cases):
        rows.append(evaluate_case(seed, models, options, change))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))
    summary, intervals = print_summary(rows)
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "intervals_95": intervals, "cases": rows,
                                              "targets": TARGETS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
