"""Segment every study of a folder: the same outputs as ``breastseg segment`` per study, plus a batch summary.

A study is a folder holding a pre- and a post-contrast image file (recognised by name, as the Slicer module
recognises loaded volumes: words such as pre and post, or nnU-Net's channel names CASE_0000 and CASE_0001) or DICOM
files (discovered by ``segment --dicom``). The input folder itself may be one study (image pair or DICOM files
directly inside); otherwise each sub-folder holding a study is one. Each study runs through the registered
``segment`` command in this process, so the outputs are exactly the command's; one failing study is recorded in the
summary and the others still run. Given a folder of reference lesion masks named after the studies (as MAMA-MIA's
segmentations are), each study found there is scored as ``segment --reference`` scores one, and the summary adds
its Dice and lesions found, missed and false.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import InputError
from .inference.pipeline import ModelSet, SegmentationOptions, load_models
from .inference.study import StudyInput, segment_study, study_from_dicom, study_from_files
from .io.images import SINGLE_FILE_SUFFIXES
from .progress import Cancelled, Progress, silent
from .reports.tables import write_csv, write_json
from .scene import VolumeCandidate, choose_pre_post

log = logging.getLogger(__name__)

SUMMARY_CSV = "batch_summary.csv"
SUMMARY_JSON = "batch_summary.json"

_DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class Study:
    """One study to segment: pre + post image files, or a DICOM folder; and its reference lesion mask, if any."""

    name: str
    folder: Path
    pre: Path | None = None
    post: Path | None = None
    dicom: Path | None = None
    reference: Path | None = None


@dataclass(frozen=True)
class BatchOptions:
    """Where the models come from and run, and the segmentation options of every study."""

    device: str = "auto"
    models: Path | None = None
    segmentation: SegmentationOptions = field(default_factory=SegmentationOptions)


@dataclass(frozen=True)
class StudyResult:
    """One line of the batch summary."""

    study: str
    status: str
    exit_code: int
    message: str
    output_dir: str
    lesions: int | None
    lesion_volume_mm3: float | None
    seconds: float
    #: against the study's reference lesion mask (None without one): Dice and lesions found, missed and false
    dice: float | None = None
    reference_lesions_found: int | None = None
    reference_lesions_missed: int | None = None
    false_positive_lesions: int | None = None


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.name.lower().endswith(SINGLE_FILE_SUFFIXES))


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            handle.seek(_DICOM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _holds_dicom(folder: Path, nested: bool) -> bool:
    """DICOM files directly in ``folder`` or, when ``nested``, anywhere below it (series in sub-folders)."""
    paths = folder.rglob("*") if nested else folder.iterdir()
    return any(_is_dicom_file(path) for path in paths if path.is_file())


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(next(s for s in SINGLE_FILE_SUFFIXES if name.lower().endswith(s)))]


def study_in(folder: Path, nested: bool = True) -> Study | None:
    """The study stored in ``folder``: a recognised pre/post pair of image files first, else DICOM files
    (directly in ``folder``, or also in its sub-folders when ``nested``)."""
    images = {os.fspath(path): path for path in _image_files(folder)}
    pre_key, post_key = choose_pre_post([VolumeCandidate(key, _stem(path)) for key, path in images.items()])
    if pre_key and post_key:
        return Study(folder.name, folder, pre=images[pre_key], post=images[post_key])
    if _holds_dicom(folder, nested):
        return Study(folder.name, folder, dicom=folder)
    return None


def discover_studies(input_dir: str | os.PathLike, reference_dir: str | os.PathLike | None = None) -> list[Study]:
    """The studies of ``input_dir``: the folder itself when it directly holds a study, else its sub-folders; each
    with its reference lesion mask from ``reference_dir`` when given (:func:`reference_masks`)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError("is not a folder", input_dir)
    own = study_in(input_dir, nested=False)
    studies = [own] if own is not None else [
        study for child in sorted(input_dir.iterdir()) if child.is_dir() and (study := study_in(child))]
    if not studies:
        raise InputError("holds no study: no sub-folder with a pre- and post-contrast image pair or DICOM files",
                         input_dir)
    if reference_dir is None:
        return studies
    references = reference_masks(reference_dir)
    unscored = [study.name for study in studies if study.name.lower() not in references]
    if unscored:
        log.warning("no reference lesion mask in %s for %s: segmented without scores", reference_dir,
                    ", ".join(unscored))
    return [replace(study, reference=references.get(study.name.lower())) for study in studies]


def reference_masks(reference_dir: str | os.PathLike) -> dict[str, Path]:
    """The image files of ``reference_dir`` by their lower-case name without suffix: study ``DUKE_001``'s reference
    is ``duke_001.nii.gz`` there, as MAMA-MIA and nnU-Net name label files after their case."""
    reference_dir = Path(reference_dir)
    if not reference_dir.is_dir():
        raise InputError("is not a folder", reference_dir)
    return {_stem(path).lower(): path for path in _image_files(reference_dir)}


def _study_progress(progress: Progress, study: Study, index: int, total: int) -> Progress:
    """Progress of one study, reported through ``progress`` with the study named in the stage."""
    def report(stage: str, done: float) -> None:
        progress.update(f"{study.name} ({index}/{total}): {stage}", done)

    return Progress(report, progress.cancel_event)


def _read_study(study: Study, progress: Progress) -> StudyInput:
    if study.dicom is not None:
        return study_from_dicom(study.dicom, progress)
    return study_from_files(study.pre, study.post)


def segment_one(study: Study, output_dir: Path, models: ModelSet, options: BatchOptions,
                progress: Progress) -> StudyResult:
    """Segment one study into ``output_dir/<study name>``; a failure becomes the result's status and message."""
    out_dir = output_dir / study.name
    started = time.perf_counter()
    lesions = volume = None
    scores: dict = {}
    try:
        summary = segment_study(_read_study(study, progress), out_dir, models, options.segmentation,
                                study.reference, progress=progress)
        exit_code, status, message = 0, "ok", ""
        lesions = summary["lesion_count"]
        volume = math.fsum(row["volume_mm3"] for row in summary["lesions"])
        scores = _reference_scores(summary["metrics"]) if "metrics" in summary else {}
    except InputError as error:
        exit_code, status, message = 2, "bad input", str(error)
    except Cancelled:
        raise
    except Exception as error:  # a bug in one study must not stop the others; the traceback goes to the log
        log.exception("internal error while segmenting %s", study.folder)
        exit_code, status, message = 1, "failed", f"internal error: {error}"
    return StudyResult(study.name, status, exit_code, message, os.fspath(out_dir), lesions, volume,
                       round(time.perf_counter() - started, 2), **scores)


def _reference_scores(metrics: dict) -> dict:
    """The batch summary's columns from a study's ``metrics.json`` content."""
    found = metrics["lesions"]
    return {"dice": round(metrics["dice"], 4), "reference_lesions_found": found["tp"],
            "reference_lesions_missed": found["fn"], "false_positive_lesions": found["fp"]}


def pooled_scores(results: list[StudyResult]) -> dict:
    """The scored studies' mean Dice and their lesions found, missed and false, in all (nothing when none is)."""
    scored = [r for r in results if r.dice is not None]
    if not scored:
        return {}
    mean_dice = math.fsum(r.dice for r in scored) / len(scored)
    counts = ("reference_lesions_found", "reference_lesions_missed", "false_positive_lesions")
    totals = {name: sum(getattr(r, name) for r in scored) for name in counts}
    return {"scored": {"studies": len(scored), "mean_dice": round(mean_dice, 4), **totals}}


def write_batch_summary(results: list[StudyResult], output_dir: str | os.PathLike) -> Path:
    """Write ``batch_summary.csv`` and ``batch_summary.json`` into ``output_dir``; return the CSV path."""
    output_dir = Path(output_dir)
    rows = [asdict(result) for result in results]
    write_json({"studies": rows, "ok": sum(r.status == "ok" for r in results), "total": len(results),
                **pooled_scores(results)}, output_dir / SUMMARY_JSON)
    return write_csv(rows, output_dir / SUMMARY_CSV, columns=list(StudyResult.__dataclass_fields__))


def run_batch(input_dir: str | os.PathLike, output_dir: str | os.PathLike, options: BatchOptions | None = None,
              progress: Progress | None = None, reference_dir: str | os.PathLike | None = None) -> list[StudyResult]:
    """Segment every study of ``input_dir`` into ``output_dir/<study>`` (and score it against its reference lesion
    mask in ``reference_dir`` where there is one); write and return the batch summary."""
    options = options or BatchOptions()
    progress = progress or silent()
    output_dir = Path(output_dir)
    studies = discover_studies(input_dir, reference_dir)
    models = load_models(options.models, options.device)
    results = [segment_one(study, output_dir, models, options, _study_progress(progress, study, index, len(studies)))
               for index, study in enumerate(studies, start=1)]
    write_batch_summary(results, output_dir)
    return results
