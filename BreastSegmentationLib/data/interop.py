"""Other dataset layouts: BreastDM ``.npy`` import, nnU-Net v2 raw import and export.

Imports write a dataset folder (one case folder with ``pre``, ``post``, ``lesions`` and ``case.json`` per case,
:mod:`.datasets`). The export writes an nnU-Net v2 raw dataset of the same cases, optionally with the same
cross-validation folds and test cases, so a user can compare with nnU-Net on the same split.
All outputs are atomic: on any error nothing is left behind.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.images import (
    align_post_to_pre,
    binary_mask,
    check_mask,
    read_image,
    read_volume,
    same_geometry,
    write_image,
)
from ..io.outputs import atomic_output_dir
from ..progress import Progress, silent
from .datasets import CaseRecord

#: BreastDM's files per patient (seed 003): pre-contrast, first post-contrast, and the lesion mask (0/255).
BREASTDM_FILES = {"pre": "VIBRANT.npy", "post": "VIBRANT+C2.npy", "lesions": "SUB2.npy"}
#: The .npy files carry no geometry; seed 003 converted them with an identity affine, i.e. 1 mm voxels.
BREASTDM_DEFAULT_SPACING = (1.0, 1.0, 1.0)
EXPORT_CHANNELS = ("pre", "post", "subtraction")
NNUNET_FILE_ENDING = ".nii.gz"
NNUNET_LABELS = {"background": 0, "lesion": 1}


def _require_empty_destination(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise InputError("already exists and is not empty; choose a new folder", folder)


def _write_case(staging: Path, case_id: str, images: Mapping[str, sitk.Image], description: dict) -> None:
    case_folder = staging / case_id
    for role, image in images.items():
        write_image(image, case_folder / f"{role}.nii.gz")
    (case_folder / "case.json").write_text(json.dumps({"case_id": case_id, **description}, indent=2) + "\n",
                                           encoding="utf-8")


def _records(out_folder: Path, case_ids: Sequence[str]) -> list[CaseRecord]:
    return [CaseRecord(case_id, case_id, pre=out_folder / case_id / "pre.nii.gz",
                       post=out_folder / case_id / "post.nii.gz", lesions=out_folder / case_id / "lesions.nii.gz")
            for case_id in case_ids]


# BreastDM -----------------------------------------------------------------------------------------------------------

def import_breastdm(folder: str | os.PathLike, out_folder: str | os.PathLike,
                    spacing: Sequence[float] = BREASTDM_DEFAULT_SPACING, slice_axis: int | None = None,
                    progress: Progress | None = None) -> list[CaseRecord]:
    """Convert BreastDM patients (any folder below ``folder`` holding the three .npy files) into a dataset folder.

    Each array is 3-D; its slice axis is ``slice_axis`` or, by default, its shortest axis (8 slices of 369 x 369),
    and each slice is read with rows along y and columns along x. Slices blank in both images (BreastDM pads
    volumes to 8 slices) are dropped; the label's 255 becomes 1. ``spacing`` (x, y, z in mm) is assumed, since
    the files record none.
    """
    folder, out_folder = Path(folder), Path(out_folder)
    progress = progress or silent()
    patients = sorted({path.parent for path in folder.rglob(BREASTDM_FILES["pre"])})
    if not patients:
        raise InputError(f"no BreastDM patient folders found (folders holding {', '.join(BREASTDM_FILES.values())})",
                         folder)
    _require_empty_destination(out_folder)
    case_ids = [_breastdm_case_id(patient, folder) for patient in patients]
    with atomic_output_dir(out_folder) as staging:
        for patient, case_id in progress.track(list(zip(patients, case_ids)), "importing BreastDM"):
            arrays = {role: _load_npy(patient / name) for role, name in BREASTDM_FILES.items()}
            volumes, kept = _breastdm_volumes(arrays, patient, slice_axis)
            images = {role: _image_from_array(array, spacing) for role, array in volumes.items()}
            _write_case(staging, case_id, images, {
                "patient_id": case_id, "source": f"BreastDM {patient}", "assumed_spacing_mm": list(spacing),
                "kept_slices": [int(index) for index in kept]})
    return _records(out_folder, case_ids)


def _breastdm_case_id(patient: Path, root: Path) -> str:
    relative = patient.relative_to(root)
    return "_".join(relative.parts) if relative.parts else root.name


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"cannot be read as a numpy array ({error})", path) from None
    if array.ndim != 3:
        raise InputError(f"array is {array.ndim}-D ({array.shape}), a 3-D volume is needed", path)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"array holds {array.dtype} values, real numbers are needed", path)
    if not np.all(np.isfinite(array)):
        raise InputError("array contains NaN or infinite values", path)
    return array


def _breastdm_volumes(arrays: dict[str, np.ndarray], patient: Path,
                      slice_axis: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(z, y, x) pre, post and lesion arrays without blank slices, and the indices of the slices kept."""
    shapes = {role: array.shape for role, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(f"the three arrays differ in shape: {shapes}", patient)
    label_values = set(np.unique(arrays["lesions"]).tolist())
    if not label_values <= {0, 1, 255}:
        raise InputError(f"{BREASTDM_FILES['lesions']} is not a lesion mask: values {sorted(label_values)[:6]} "
                         "(expected 0 and 255, or 0 and 1)", patient / BREASTDM_FILES["lesions"])
    axis = int(np.argmin(shapes["pre"])) if slice_axis is None else slice_axis
    volumes = {role: np.moveaxis(array, axis, 0) for role, array in arrays.items()}
    kept = np.flatnonzero(volumes["pre"].any(axis=(1, 2)) | volumes["post"].any(axis=(1, 2)))
    if kept.size < 2:
        raise InputError(f"only {kept.size} non-blank slice(s); a 3-D volume is needed", patient)
    volumes = {role: volume[kept] for role, volume in volumes.items()}
    volumes["lesions"] = (volumes["lesions"] > 0).astype(np.uint8)
    for role in ("pre", "post"):
        if np.issubdtype(volumes[role].dtype, np.floating) or volumes[role].dtype.itemsize > 4:
            volumes[role] = volumes[role].astype(np.float32)
    return volumes, kept


def _image_from_array(array_zyx: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(tuple(float(value) for value in spacing))
    return image


# nnU-Net v2 raw -----------------------------------------------------------------------------------------------------

def import_nnunet_raw(dataset_dir: str | os.PathLike, out_folder: str | os.PathLike,
                      progress: Progress | None = None) -> list[CaseRecord]:
    """Convert an nnU-Net raw dataset's training cases (imagesTr, labelsTr) into a dataset folder.

    The pre- and post-contrast channels are the ones whose ``channel_names`` contain "pre" and "post", else
    channels 0 and 1; the lesion mask is the label named "lesion", else every non-background label.
    """
    dataset_dir, out_folder = Path(dataset_dir), Path(out_folder)
    progress = progress or silent()
    description = _read_dataset_json(dataset_dir)
    ending = description.get("file_ending", NNUNET_FILE_ENDING)
    pre_channel, post_channel = _pre_post_channels(description, dataset_dir)
    lesion_values = _lesion_label_values(description, dataset_dir)
    images_dir = dataset_dir / "imagesTr"
    identifiers = sorted(path.name[: -len(f"_0000{ending}")] for path in images_dir.glob(f"*_0000{ending}"))
    if not identifiers:
        raise InputError(f"no training images (*_0000{ending})", images_dir)
    _require_empty_destination(out_folder)
    with atomic_output_dir(out_folder) as staging:
        for identifier in progress.track(identifiers, "importing nnU-Net dataset"):
            pre = read_volume(images_dir / f"{identifier}_{pre_channel:04d}{ending}", "pre-contrast image")
            post = read_volume(images_dir / f"{identifier}_{post_channel:04d}{ending}", "post-contrast image")
            label_path = dataset_dir / "labelsTr" / f"{identifier}{ending}"
            label = check_mask(read_image(label_path), "label", label_path)
            lesions = sitk.GetImageFromArray(np.isin(sitk.GetArrayViewFromImage(label), lesion_values).astype(np.uint8))
            lesions.CopyInformation(label)
            _write_case(staging, identifier, {"pre": pre, "post": post, "lesions": lesions},
                        {"patient_id": identifier, "source": f"nnU-Net {dataset_dir.name}"})
    return _records(out_folder, identifiers)


def _read_dataset_json(dataset_dir: Path) -> dict:
    path = dataset_dir / "dataset.json"
    if not path.is_file():
        raise InputError("not an nnU-Net raw dataset: dataset.json not found", dataset_dir)
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"cannot be read as JSON ({error})", path) from None
    if not isinstance(description, dict) or not isinstance(description.get("channel_names"), dict):
        raise InputError("has no channel_names (an nnU-Net v2 dataset.json is needed)", path)
    return description


def _pre_post_channels(description: dict, dataset_dir: Path) -> tuple[int, int]:
    names = {int(index): str(name).lower() for index, name in description["channel_names"].items()}
    if len(names) < 2:
        raise InputError(f"has {len(names)} channel(s); pre- and post-contrast channels are needed",
                         dataset_dir / "dataset.json")
    named = [next((index for index, name in sorted(names.items()) if word in name), None) for word in ("pre", "post")]
    if None in named or named[0] == named[1]:
        return 0, 1
    return named[0], named[1]


def _lesion_label_values(description: dict, dataset_dir: Path) -> list[int]:
    labels = description.get("labels") or {}
    if "lesion" in labels:
        return [int(labels["lesion"])]
    values = [int(value) for name, value in labels.items() if name != "background" and not isinstance(value, list)]
    if not values:
        raise InputError("names no foreground label", dataset_dir / "dataset.json")
    return values


def export_nnunet_raw(records: Sequence[CaseRecord], dataset_dir: str | os.PathLike, dataset_id: int, name: str,
                      channels: Sequence[str] = ("pre", "post"),
                      splits: Sequence[Mapping[str, Sequence[str]]] | None = None,
                      test_records: Sequence[CaseRecord] = (), progress: Progress | None = None) -> Path:
    """Write ``records`` as ``dataset_dir/DatasetXXX_name`` in nnU-Net v2 raw format; return that folder.

    imagesTr/CASE_0000.nii.gz (one file per channel, all on the pre-contrast grid), labelsTr/CASE.nii.gz (lesion 1)
    and dataset.json. ``splits`` (a list of {"train": case ids, "val": case ids}) becomes splits_final.json, to be
    copied into nnUNet_preprocessed/DatasetXXX_name/ so nnU-Net trains on the same folds; ``test_records`` go to
    imagesTs and labelsTs for prediction and evaluation. Channel names "pre"/"post"/"subtraction" make nnU-Net use
    z-score normalisation.
    """
    progress = progress or silent()
    dataset_dir = Path(dataset_dir)
    target = dataset_dir / _nnunet_dataset_name(dataset_id, name, channels)
    if dataset_dir.is_dir() and any(dataset_dir.glob(f"Dataset{dataset_id:03d}_*")):
        raise InputError(f"an nnU-Net dataset with id {dataset_id} already exists; choose another id", dataset_dir)
    identifiers = _nnunet_identifiers([*records, *test_records])
    without_lesions = [record.case_id for record in [*records, *test_records] if record.lesions is None]
    if without_lesions:
        raise InputError(f"nnU-Net export needs lesion masks; missing for {', '.join(without_lesions)}")
    with atomic_output_dir(target) as staging:
        for part, part_records in (("Tr", records), ("Ts", test_records)):
            for record in progress.track(part_records, f"exporting nnU-Net images{part}"):
                _export_case(record, identifiers[record.case_id], staging, part, channels)
        dataset_json = {
            "channel_names": {str(index): channel for index, channel in enumerate(channels)},
            "labels": NNUNET_LABELS,
            "numTraining": len(records),
            "file_ending": NNUNET_FILE_ENDING,
            "name": name,
            "description": "Exported by BreastSegmentationLib: pre- and first post-contrast breast DCE-MRI, lesions.",
        }
        (staging / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n", encoding="utf-8")
        if splits is not None:
            nnunet_splits = [{key: [identifiers[case_id] for case_id in fold[key]] for key in ("train", "val")}
                             for fold in splits]
            (staging / "splits_final.json").write_text(json.dumps(nnunet_splits, indent=2) + "\n", encoding="utf-8")
    return target


def _nnunet_dataset_name(dataset_id: int, name: str, channels: Sequence[str]) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"nnU-Net dataset ids are 1 to 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise InputError(f"nnU-Net dataset names use letters, digits, '_' and '-', got {name!r}")
    unknown = [channel for channel in channels if channel not in EXPORT_CHANNELS]
    if unknown or not channels:
        raise InputError(f"channels must be some of {', '.join(EXPORT_CHANNELS)}, got {list(channels)}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def _nnunet_identifiers(records: Sequence[CaseRecord]) -> dict[str, str]:
    """File-name-safe case identifiers, unique, as nnU-Net uses them in file names."""
    identifiers = {record.case_id: re.sub(r"[^A-Za-z0-9_-]", "-", record.case_id) for record in records}
    if len(set(identifiers.values())) < len(identifiers) or len(identifiers) < len(records):
        raise InputError("case ids must stay unique in nnU-Net file names (letters, digits, '_' and '-')")
    return identifiers


def _export_case(record: CaseRecord, identifier: str, staging: Path, part: str, channels: Sequence[str]) -> None:
    pre = sitk.Cast(read_volume(record.pre, "pre-contrast image"), sitk.sitkFloat32)
    post = sitk.Cast(align_post_to_pre(pre, read_volume(record.post, "post-contrast image"),
                                       str(record.pre), str(record.post)), sitk.sitkFloat32)
    lesions = binary_mask(check_mask(read_image(record.lesions), "lesion mask", record.lesions))
    if not same_geometry(lesions, pre):
        raise InputError("the lesion mask's grid differs from the pre-contrast image's", record.lesions)
    for image in (post, lesions):
        image.CopyInformation(pre)  # nnU-Net compares the channels' and label's geometry exactly
    volumes = {"pre": pre, "post": post, "subtraction": sitk.Subtract(post, pre)}
    for index, channel in enumerate(channels):
        write_image(volumes[channel], staging / f"images{part}" / f"{identifier}_{index:04d}{NNUNET_FILE_ENDING}")
    write_image(lesions, staging / f"labels{part}" / f"{identifier}{NNUNET_FILE_ENDING}")
