"""Datasets: a folder of case folders or a CSV/JSON manifest, checked completely before any training starts.

Folder layout (what the phantom writes): one subfolder per case with ``pre`` and ``post`` (first post-contrast)
images and optional ``breast`` and ``lesions`` masks, each ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` (also
``.nhdr``/``.mhd``); an optional ``case.json`` may name the ``patient_id``. Manifest: columns or keys
``case_id, patient_id, pre, post, breast, lesions``, paths relative to the manifest; ``patient_id`` defaults to
``case_id`` (cross-validation splits by patient).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.images import (
    IMAGE_SUFFIXES,
    MINIMUM_OVERLAP,
    check_mask,
    physical_overlap,
    read_image,
    read_volume,
    same_geometry,
)
from ..io.outputs import atomic_output_file
from ..progress import Progress, silent

IMAGE_ROLES = ("pre", "post")
MASK_ROLES = ("breast", "lesions")
MANIFEST_COLUMNS = ("case_id", "patient_id", "pre", "post", "breast", "lesions")
#: The mask each task trains on: breast region segmentation (BRS) or breast lesion segmentation.
TASK_MASKS = {"breast": "breast", "lesion": "lesions"}


@dataclass(frozen=True)
class CaseRecord:
    """One case of a dataset: where its images and masks are (masks None when absent)."""

    case_id: str
    patient_id: str
    pre: Path
    post: Path
    breast: Path | None = None
    lesions: Path | None = None


def load_dataset(path: str | os.PathLike, require: Sequence[str] = ()) -> list[CaseRecord]:
    """Read a dataset folder or manifest; every case must have pre, post and the masks named in ``require``."""
    path = Path(path)
    if not path.exists():
        raise InputError("dataset not found", path)
    if path.is_dir():
        records = _records_from_folder(path)
    elif path.suffix.lower() == ".csv":
        records = _records_from_rows(_csv_rows(path), path)
    elif path.suffix.lower() == ".json":
        records = _records_from_rows(_json_rows(path), path)
    else:
        raise InputError("a dataset is a folder of case folders or a .csv/.json manifest", path)
    _require_unique_ids(records, path)
    _require_masks(records, require, path)
    return records


def _find_image(folder: Path, role: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{role}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _records_from_folder(folder: Path) -> list[CaseRecord]:
    records, problems = [], []
    for case_folder in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = {role: _find_image(case_folder, role) for role in IMAGE_ROLES + MASK_ROLES}
        if not any(found.values()):
            continue
        missing = [role for role in IMAGE_ROLES if found[role] is None]
        if missing:
            problems.append(f"{case_folder}: no {' and no '.join(missing)} image "
                            f"(expected {missing[0]}{IMAGE_SUFFIXES[0]} or another of {', '.join(IMAGE_SUFFIXES)})")
            continue
        records.append(CaseRecord(case_folder.name, _patient_id(case_folder), **found))
    _raise_problems(problems, folder)
    if not records:
        raise InputError("no case folders found: expected subfolders holding pre and post images", folder)
    return records


def _patient_id(case_folder: Path) -> str:
    """The ``patient_id`` of the case's ``case.json`` when it names one, else the folder name."""
    description = case_folder / "case.json"
    if description.is_file():
        try:
            patient = json.loads(description.read_text(encoding="utf-8")).get("patient_id")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise InputError("is not a JSON object", description) from None
        if patient:
            return str(patient)
    return case_folder.name


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot be read as a CSV manifest ({error})", path) from None


def _json_rows(path: Path) -> list[dict]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"cannot be read as a JSON manifest ({error})", path) from None
    rows = content.get("cases") if isinstance(content, dict) else content
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError('a JSON manifest is a list of case objects or {"cases": [...]}', path)
    return rows


def _records_from_rows(rows: list[dict], manifest: Path) -> list[CaseRecord]:
    if not rows:
        raise InputError("the manifest lists no cases", manifest)
    columns = {key.strip() for row in rows for key in row if key}
    missing = [column for column in ("case_id", *IMAGE_ROLES) if column not in columns]
    if missing:
        raise InputError(f"the manifest has no {', '.join(missing)} column; expected {', '.join(MANIFEST_COLUMNS)}",
                         manifest)
    records, problems = [], []
    for number, row in enumerate(rows, start=1):
        values = {key.strip(): str(value).strip() for key, value in row.items() if key and value is not None}
        empty = [column for column in ("case_id", *IMAGE_ROLES) if not values.get(column)]
        if empty:
            problems.append(f"{manifest}: case {number} has no {', '.join(empty)}")
            continue
        paths = {role: _manifest_path(values.get(role), manifest) for role in IMAGE_ROLES + MASK_ROLES}
        records.append(CaseRecord(values["case_id"], values.get("patient_id") or values["case_id"], **paths))
    _raise_problems(problems, manifest)
    return records


def _manifest_path(value: str | None, manifest: Path) -> Path | None:
    if not value:
        return None
    return Path(os.path.normpath(manifest.parent / Path(value).expanduser()))


def _require_unique_ids(records: list[CaseRecord], source: Path) -> None:
    seen, duplicates = set(), []
    for record in records:
        if record.case_id in seen:
            duplicates.append(record.case_id)
        seen.add(record.case_id)
    if duplicates:
        raise InputError(f"case ids must be unique; repeated: {', '.join(sorted(set(duplicates)))}", source)


def _require_masks(records: list[CaseRecord], require: Sequence[str], source: Path) -> None:
    unknown = [role for role in require if role not in MASK_ROLES]
    if unknown:
        raise ValueError(f"unknown mask roles {unknown}; use {MASK_ROLES}")
    problems = [f"case {record.case_id} has no {role} mask" for record in records for role in require
                if getattr(record, role) is None]
    _raise_problems(problems, source)


def _raise_problems(problems: list[str], source: Path | None) -> None:
    """One InputError for all problems: the user sees everything to fix at once, not one problem per run."""
    if len(problems) == 1:
        raise InputError(problems[0], source)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise InputError(f"{len(problems)} problems found:\n{listing}", source)


def validate_dataset(records: Sequence[CaseRecord], task: str, min_patients: int = 1,
                     progress: Progress | None = None) -> None:
    """Check a dataset before training: raise one InputError listing every problem, each naming its file.

    Images must exist and read as 3-D volumes without NaN/inf, the post-contrast one overlapping the pre-contrast one
    (it is resampled onto it); masks must be masks on the pre-contrast image's grid;
    the task's mask (``breast`` for BRS, ``lesions`` for lesion segmentation) must be present and not empty; the
    dataset needs at least ``min_patients`` patients.
    """
    for _ in read_checked(records, task, min_patients, progress):
        pass


def read_checked(records: Sequence[CaseRecord], task: str, min_patients: int = 1,
                 progress: Progress | None = None) -> Iterator[tuple[CaseRecord, dict[str, sitk.Image | None]]]:
    """Each case with its images and masks (None when absent), read once and checked as :func:`validate_dataset`
    says; after the last case, one InputError lists every problem. Once a problem is found the remaining cases are
    only checked, no longer handed out, so nothing is built on a dataset that will be refused."""
    if task not in TASK_MASKS:
        raise ValueError(f"unknown task {task!r}; use one of {tuple(TASK_MASKS)}")
    progress = progress or silent()
    problems = []
    patients = {record.patient_id for record in records}
    if len(patients) < min_patients:
        problems.append(f"the dataset has {len(patients)} patient(s); at least {min_patients} are needed")
    for record in progress.track(records, "checking dataset"):
        images, case_problems = _read_case(record, TASK_MASKS[task])
        problems.extend(case_problems)
        if not problems:
            yield record, images
    _raise_problems(problems, None)


def _read_case(record: CaseRecord, task_mask: str) -> tuple[dict[str, sitk.Image | None], list[str]]:
    problems: list[str] = []
    pre = _read_or_problem(record.pre, "pre-contrast image", problems, as_mask=False)
    post = _read_or_problem(record.post, "post-contrast image", problems, as_mask=False)
    images = {"pre": pre, "post": post}
    if pre is not None and post is not None and not same_geometry(pre, post):
        overlap = physical_overlap(pre, post)
        if overlap < MINIMUM_OVERLAP:
            problems.append(f"{record.post}: covers {overlap:.0%} of the pre-contrast image {record.pre} (at least "
                            f"{MINIMUM_OVERLAP:.0%} is needed); check that both belong to the same study")
    for role in MASK_ROLES:
        path = getattr(record, role)
        images[role] = None
        if path is None:
            if role == task_mask:
                problems.append(f"case {record.case_id}: no {role} mask, which this task trains on")
            continue
        mask = _read_or_problem(path, f"{role} mask", problems, as_mask=True)
        if mask is None:
            continue
        if pre is not None and not same_geometry(mask, pre):
            problems.append(f"{path}: the {role} mask's grid differs from the pre-contrast image's "
                            f"({_grid_text(mask)} vs {_grid_text(pre)})")
        elif role == task_mask and not np.any(sitk.GetArrayViewFromImage(mask)):
            problems.append(f"{path}: the {role} mask is empty")
        images[role] = mask
    return images, problems


def _read_or_problem(path: Path, name: str, problems: list[str], as_mask: bool) -> sitk.Image | None:
    try:
        if as_mask:
            return check_mask(read_image(path), name, path)
        return read_volume(path, name)
    except InputError as error:
        problems.append(str(error))
        return None


def _grid_text(image: sitk.Image) -> str:
    spacing = "x".join(f"{value:g}" for value in image.GetSpacing())
    return f"size {'x'.join(str(v) for v in image.GetSize())}, spacing {spacing} mm"


def write_manifest(records: Sequence[CaseRecord], path: str | os.PathLike) -> Path:
    """Write ``records`` as a CSV or JSON manifest (by suffix), paths relative to it where possible; atomic."""
    path = Path(path)
    rows = [_manifest_row(record, path.parent) for record in records]
    if path.suffix.lower() not in (".csv", ".json"):
        raise InputError("a manifest is a .csv or .json file", path)
    with atomic_output_file(path) as temporary:
        if path.suffix.lower() == ".json":
            temporary.write_text(json.dumps({"cases": rows}, indent=2) + "\n", encoding="utf-8")
        else:
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    return path


def _manifest_row(record: CaseRecord, base: Path) -> dict[str, str]:
    row = {"case_id": record.case_id, "patient_id": record.patient_id}
    for role in IMAGE_ROLES + MASK_ROLES:
        value = getattr(record, role)
        row[role] = "" if value is None else _relative(Path(value), base)
    return row


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return str(path.resolve())

