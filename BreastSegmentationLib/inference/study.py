"""One study end to end: inputs (files or a DICOM folder) -> segmentation -> lesion table, metrics -> outputs.

This is the library call behind ``breastseg segment``, ``breastseg demo``, the batch script and the Slicer
module. Outputs are staged and moved into the output folder only when everything succeeded.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..evaluation.carbon import CarbonSettings, EnergyMeter, EnergyReport
from ..evaluation.lesions import evaluate_case, lesion_table_columns, study_lesion_table
from ..io.dicom import discover_study, read_phase
from ..io.images import check_mask, read_image, read_volume, same_geometry, write_image
from ..io.outputs import atomic_output_dir
from ..progress import Progress, silent
from ..reports.overview import save_overview
from ..reports.tables import write_csv, write_json
from .pipeline import ModelSet, Segmentation, SegmentationOptions, segment_images

log = logging.getLogger(__name__)

OUTPUT_FILES = ("breast.nii.gz", "lesions.nii.gz", "lesion_probability.nii.gz", "lesions.csv", "summary.json",
                "overview.png")


@dataclass
class StudyInput:
    """The two phases of a study and where they came from (JSON-able ``sources``)."""

    pre: sitk.Image
    post: sitk.Image
    sources: dict = field(default_factory=dict)


def study_from_files(pre_path: str | Path, post_path: str | Path) -> StudyInput:
    """Read pre- and post-contrast volumes from image files (or single-series DICOM folders).

    The two are read side by side: most of a read is decompression, which runs outside Python's GIL.
    """
    with ThreadPoolExecutor(max_workers=2) as pool:
        reading_pre = pool.submit(read_volume, pre_path, "pre-contrast image")
        reading_post = pool.submit(read_volume, post_path, "post-contrast image")
        pre, post = reading_pre.result(), reading_post.result()
    return StudyInput(pre, post, {"pre": {"path": str(pre_path)}, "post": {"path": str(post_path)}})


def _series_source(series) -> dict:
    return {"series_uid": series.uid, "description": series.description, "slices": series.n_slices,
            "reasons": list(series.reasons)}


def study_from_dicom(folder: str | Path, progress: Progress | None = None) -> StudyInput:
    """Discover the pre-contrast and first post-contrast phases of a DICOM study folder and read them; the discovery's
    warnings (reformatted phases only, an unknown phase order, files ignored) go into the sources, so that
    ``summary.json`` keeps them beside the series chosen."""
    discovery = discover_study(folder, progress)
    if discovery.pre is None or discovery.first_post is None:
        raise InputError("no DCE series to segment: " + "; ".join(discovery.missing), folder)
    pre = read_phase(discovery.pre)
    post = read_phase(discovery.first_post)
    sources = {"dicom_folder": str(folder), "pre": _series_source(discovery.pre),
               "post": _series_source(discovery.first_post), "warnings": list(discovery.warnings)}
    return StudyInput(pre, post, sources)


def _reference_on(reference_path: str | Path, pre: sitk.Image) -> sitk.Image:
    """The reference lesion mask, which must lie on the pre-contrast grid (resampling it would change volumes)."""
    reference = check_mask(read_image(reference_path), "reference lesion mask", reference_path)
    if not same_geometry(reference, pre):
        raise InputError("the reference lesion mask does not lie on the pre-contrast image's grid", reference_path)
    return reference


def segment_study(study: StudyInput, out_dir: str | Path, models: ModelSet,
                  options: SegmentationOptions | None = None, reference: str | Path | None = None,
                  carbon: CarbonSettings | None = None, progress: Progress | None = None) -> dict:
    """Segment ``study`` and write the outputs into ``out_dir``; return the summary (also ``summary.json``)."""
    progress = progress or silent()
    reference_mask = _reference_on(reference, study.pre) if reference is not None else None
    started = time.perf_counter()
    with EnergyMeter(carbon or CarbonSettings()) as meter:
        result = segment_images(study.pre, study.post, models, options, progress)
    progress.update("report", 0.0)
    # The volumes are compressed and written in threads (ITK's writer leaves Python's GIL; the probability is the one
    # the pipeline put onto the study's grid in the background), while the lesion table is measured and the figure
    # drawn.
    with atomic_output_dir(out_dir) as staging, ThreadPoolExecutor(max_workers=3) as pool:
        volumes = [pool.submit(write_image, result.breast, staging / "breast.nii.gz"),
                   pool.submit(write_image, result.lesions, staging / "lesions.nii.gz"),
                   pool.submit(lambda: write_image(result.probability, staging / "lesion_probability.nii.gz"))]
        lesion_rows = study_lesion_table(result.lesions, study.pre, result.post_aligned)
        # Without pre and post: the per-lesion enhancement tables they add are not written here.
        evaluation = evaluate_case(result.lesions > 0, reference_mask) if reference_mask is not None else None
        summary = _summary(study, models, result, lesion_rows, evaluation, meter.report,
                           time.perf_counter() - started)
        write_csv(lesion_rows, staging / "lesions.csv", lesion_table_columns(enhancement=True))
        if evaluation is not None:
            write_json(evaluation["metrics"], staging / "metrics.json")
            write_csv(evaluation["lesion_matches"], staging / "lesion_matches.csv")
        save_overview(study.pre, result.post_aligned, result.breast, result.lesions, staging / "overview.png",
                      lesion_rows, title=f"{len(lesion_rows)} lesion(s)")
        write_json(summary, staging / "summary.json")
        for volume in volumes:
            volume.result()
    progress.update("report", 1.0)
    return summary


def _summary(study: StudyInput, models: ModelSet, result: Segmentation, lesion_rows: list[dict],
             evaluation: dict | None, energy: EnergyReport, seconds: float) -> dict:
    """What ``summary.json`` says of a run (JSON-able)."""
    return {
        "version": __version__,
        "inputs": study.sources,
        "models": models.cards(),
        "device": result.device,
        "network_precision": result.network_precision,
        "threshold": result.threshold,
        "min_lesion_mm3": result.min_lesion_mm3,
        "min_lesion_peak": result.min_lesion_peak,
        "network_inputs": {task: list(shape) for task, shape in result.network_inputs.items()},
        "motion": result.motion.to_dict() if result.motion is not None else None,
        "seconds": {**{k: round(v, 3) for k, v in result.seconds.items()}, "total": round(seconds, 3)},
        "energy": {"method": energy.method, "energy_kwh": energy.energy_kwh, "co2_kg": energy.co2_kg},
        "breast_volume_mm3": _volume_mm3(result.breast),
        "lesion_count": len(lesion_rows),
        "lesions": lesion_rows,
        "foci_added": result.foci,
        **({"metrics": evaluation["metrics"]} if evaluation is not None else {}),
    }


def _volume_mm3(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of an unsigned mask."""
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask)) * np.prod(mask.GetSpacing()))
