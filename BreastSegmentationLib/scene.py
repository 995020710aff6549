"""What the Slicer module puts in the scene, prepared as plain Python data so that it is tested outside Slicer.

The module itself only moves these structures into MRML nodes: label maps as KJI arrays with their IJK-to-RAS
matrix, segment names, colours and terminology entries, table columns, and the choice of the pre- and
post-contrast volumes among those loaded. Everything is read from the folder that ``breastseg segment`` writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .io.geometry import kji_from_image
from .io.images import read_image, resample_like

#: Terminology contexts that Slicer loads by default (Terminologies module, Slicer 5.10).
DICOM_TERMINOLOGY = "Segmentation category and type - DICOM master list"
GENERAL_ANATOMY_TERMINOLOGY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_REGIONS = "Anatomic codes - DICOM master list"

#: Files of the folder written by ``breastseg segment``.
BREAST_FILE = "breast.nii.gz"
LESIONS_FILE = "lesions.nii.gz"
PROBABILITY_FILE = "lesion_probability.nii.gz"
LESION_TABLE_FILE = "lesions.csv"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Code:
    """A coded concept (coding scheme designator, code value, code meaning), e.g. SCT 76752008 Breast."""

    scheme: str = ""
    value: str = ""
    meaning: str = ""

    def serialized(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class TerminologyEntry:
    """A segment's meaning in Slicer's ``TerminologyEntry`` tag format (seven parts joined by ``~``)."""

    context: str
    category: Code
    type: Code
    type_modifier: Code = Code()
    region_context: str = DICOM_REGIONS
    region: Code = Code()
    region_modifier: Code = Code()

    def serialized(self) -> str:
        parts = (self.context, self.category.serialized(), self.type.serialized(), self.type_modifier.serialized(),
                 self.region_context, self.region.serialized(), self.region_modifier.serialized())
        return "~".join(parts)


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
BREAST = Code("SCT", "76752008", "Breast")
MASS = Code("SCT", "4147007", "Mass")
RIGHT_AND_LEFT = Code("SCT", "51440002", "Right and left")

# Breast is only in the DICOM master list; Mass in a breast is the documented example of Slicer's terminology tag.
BREAST_TERMINOLOGY = TerminologyEntry(DICOM_TERMINOLOGY, ANATOMICAL_STRUCTURE, BREAST, RIGHT_AND_LEFT)
LESION_TERMINOLOGY = TerminologyEntry(GENERAL_ANATOMY_TERMINOLOGY, MORPHOLOGICALLY_ALTERED_STRUCTURE, MASS,
                                      region=BREAST)


@dataclass(frozen=True)
class SegmentDefinition:
    """Name, colour (RGB 0..1), terminology and 3-D opacity of one segment."""

    segment_id: str
    name: str
    color: tuple[float, float, float]
    terminology: TerminologyEntry
    opacity_3d: float = 1.0

    @property
    def terminology_string(self) -> str:
        return self.terminology.serialized()


#: The breast region: a soft skin tone, mostly transparent in 3-D so the lesions inside stay visible.
BREAST_SEGMENT = SegmentDefinition("breast", "Breast", (0.90, 0.72, 0.62), BREAST_TERMINOLOGY, opacity_3d=0.15)
#: The recommended display colour of "Mass" in Slicer's terminologies (144, 238, 144).
LESION_COLOR = (144 / 255, 238 / 255, 144 / 255)


def lesion_segment(lesion_id: int) -> SegmentDefinition:
    """The segment of lesion ``lesion_id`` (the id of ``lesions.csv`` and of the lesion label map)."""
    return SegmentDefinition(f"lesion_{lesion_id}", f"Lesion {lesion_id}", LESION_COLOR, LESION_TERMINOLOGY)


@dataclass
class SceneLabelmap:
    """A label map ready for Slicer: voxel ``label`` belongs to ``segments[label - 1]`` (None: unused label)."""

    name: str
    kji: np.ndarray
    ijk_to_ras: np.ndarray
    segments: list[SegmentDefinition | None]

    def segment_ids(self) -> list[str]:
        """Segment id per label value 1..N, empty for unused labels (the order Slicer's label map import expects)."""
        return [segment.segment_id if segment else "" for segment in self.segments]


def _smallest_unsigned(array: np.ndarray) -> np.ndarray:
    maximum = int(array.max(initial=0))
    return array.astype(np.uint8 if maximum < 2**8 else np.uint16 if maximum < 2**16 else np.uint32)


def breast_labelmap(breast: sitk.Image) -> SceneLabelmap:
    """The breast mask (any non-zero voxel) as a one-segment label map."""
    kji, ijk_to_ras = kji_from_image(breast)
    return SceneLabelmap("Breast", (kji != 0).astype(np.uint8), ijk_to_ras, [BREAST_SEGMENT])


def lesion_label_image(lesions: sitk.Image) -> sitk.Image:
    """Lesion ids as label values: a label map is kept, a binary mask is split into numbered lesions.

    Binary masks are numbered as the library numbers lesions everywhere (26-connected, 1 the largest), so the
    labels match the ids of ``lesions.csv``.
    """
    values = sitk.GetArrayViewFromImage(lesions)
    if values.max(initial=0) > 1:
        return lesions
    # Imported here: the evaluation package needs MONAI, which the Slicer module installs on first use only.
    from .evaluation.lesions import label_lesions

    return label_lesions(lesions)


def lesion_labelmap(lesions: sitk.Image) -> SceneLabelmap:
    """The lesion label map (or binary mask) with one segment per lesion id present."""
    kji, ijk_to_ras = kji_from_image(lesion_label_image(lesions))
    kji = _smallest_unsigned(np.rint(kji).clip(min=0))
    present = set(np.unique(kji).tolist()) - {0}
    segments = [lesion_segment(label) if label in present else None for label in range(1, int(kji.max(initial=0)) + 1)]
    return SceneLabelmap("Lesions", kji, ijk_to_ras, segments)


def subtraction_image(pre: sitk.Image, post: sitk.Image) -> sitk.Image:
    """Post minus pre on the pre-contrast grid (Float32), the usual view for reading enhancement."""
    return sitk.Subtract(resample_like(post, pre), sitk.Cast(pre, sitk.sitkFloat32))


@dataclass(frozen=True)
class LesionRow:
    """One row of ``lesions.csv``."""

    lesion_id: int
    voxels: int
    volume_mm3: float
    centroid_ras_mm: tuple[float, float, float]
    longest_diameter_mm: float
    mean_enhancement: float
    peak_enhancement: float


def _number(text: str | None) -> float:
    """A CSV cell as a float; an empty or missing cell is NaN."""
    return float(text) if text not in (None, "") else math.nan


def _centroid(row: Mapping[str, str], path: Path) -> tuple[float, float, float]:
    """The RAS centroid: one JSON ``[x, y, z]`` cell (as the library writes lists) or three ``_x/_y/_z`` columns."""
    if row.get("centroid_ras_mm"):
        point = json.loads(row["centroid_ras_mm"])
    else:
        point = [row.get(f"centroid_ras_mm_{axis}") for axis in "xyz"]
    if len(point) != 3 or any(value in (None, "") for value in point):
        raise InputError("a lesion row has no centroid_ras_mm (x, y, z)", path)
    return tuple(float(value) for value in point)


def read_lesion_rows(path: str | os.PathLike) -> list[LesionRow]:
    """The lesions of a ``lesions.csv`` file, in file order."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"id", "volume_mm3"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"lesion table lacks the column(s) {', '.join(sorted(missing))}", path)
        return [
            LesionRow(
                lesion_id=int(row["id"]),
                voxels=int(row["voxels"]) if row.get("voxels") else 0,
                volume_mm3=_number(row["volume_mm3"]),
                centroid_ras_mm=_centroid(row, path),
                longest_diameter_mm=_number(row.get("longest_diameter_mm")),
                mean_enhancement=_number(row.get("mean_enhancement")),
                peak_enhancement=_number(row.get("peak_enhancement")),
            )
            for row in reader
        ]


#: Value kinds of a table column, each stored in its own VTK array type by the module.
INTEGER, REAL, TEXT = "integer", "real", "text"


@dataclass(frozen=True)
class TableColumn:
    """One column of a table node: machine name, displayed title, unit, values and their kind."""

    name: str
    title: str
    unit: str
    values: tuple
    kind: str = REAL


#: Lesion-table columns holding the RAS centroid, where the module centres the views on a selected lesion.
CENTROID_COLUMNS: tuple[str, str, str] = ("centroid_r", "centroid_a", "centroid_s")


def lesion_table(rows: Sequence[LesionRow]) -> list[TableColumn]:
    """Lesion id, volume, longest diameter, centroid (R, A, S) and mean enhancement, one row per lesion."""
    return [
        TableColumn("id", "Lesion", "", tuple(row.lesion_id for row in rows), INTEGER),
        TableColumn("volume_mm3", "Volume", "mm3", tuple(row.volume_mm3 for row in rows)),
        TableColumn("longest_diameter_mm", "Longest diameter", "mm", tuple(row.longest_diameter_mm for row in rows)),
        *(TableColumn(name, f"Centroid {name[-1].upper()}", "mm", tuple(row.centroid_ras_mm[index] for row in rows))
          for index, name in enumerate(CENTROID_COLUMNS)),
        TableColumn("mean_enhancement", "Mean enhancement", "", tuple(row.mean_enhancement for row in rows)),
    ]


def _optional_number(value: object) -> float:
    return math.nan if value is None else float(value)


def detection_table(metrics: Mapping) -> list[TableColumn]:
    """True/false positives and false negatives per lesion-volume bin (``lesions.bins`` of ``metrics.json``)."""
    bins = metrics.get("lesions", {}).get("bins", [])
    return [
        TableColumn("bin", "Lesion volume", "mm3", tuple(str(entry["label"]) for entry in bins), TEXT),
        TableColumn("min_mm3", "From", "mm3", tuple(_optional_number(entry.get("min_mm3")) for entry in bins)),
        TableColumn("max_mm3", "To", "mm3", tuple(_optional_number(entry.get("max_mm3")) for entry in bins)),
        *(TableColumn(count, count.upper(), "", tuple(int(entry[count]) for entry in bins), INTEGER)
          for count in ("tp", "fp", "fn")),
    ]


#: Overlap metrics of ``metrics.json`` shown to the user: key, displayed name, unit.
OVERLAP_METRICS: tuple[tuple[str, str, str], ...] = (
    ("dice", "Dice", ""), ("iou", "IoU", ""), ("precision", "Precision", ""), ("recall", "Recall", ""),
    ("hd95", "HD95", "mm"), ("hd", "Hausdorff distance", "mm"),
)


def overlap_table(metrics: Mapping) -> list[TableColumn]:
    """Dice, IoU, precision, recall, HD95 and HD of the lesion mask against the reference (NaN when undefined)."""
    return [
        TableColumn("metric", "Metric", "", tuple(title for _, title, _ in OVERLAP_METRICS), TEXT),
        TableColumn("value", "Value", "", tuple(_optional_number(metrics.get(key)) for key, _, _ in OVERLAP_METRICS)),
        TableColumn("unit", "Unit", "", tuple(unit for _, _, unit in OVERLAP_METRICS), TEXT),
    ]


@dataclass
class SegmentOutputs:
    """The folder written by ``breastseg segment``, read into memory."""

    folder: Path
    breast: sitk.Image
    lesions: sitk.Image
    lesion_rows: list[LesionRow]
    summary: dict
    metrics: dict | None = None
    probability_path: Path | None = None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"is not valid JSON ({error.msg} at line {error.lineno})", path) from None


def _required(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise InputError(f"the segmentation results lack {name}", folder)
    return path


def read_segment_outputs(folder: str | os.PathLike) -> SegmentOutputs:
    """Read the masks, the lesion table, the summary and (when a reference was given) the metrics of ``folder``."""
    folder = Path(folder)
    metrics_path = folder / METRICS_FILE
    probability_path = folder / PROBABILITY_FILE
    return SegmentOutputs(
        folder=folder,
        breast=read_image(_required(folder, BREAST_FILE)),
        lesions=read_image(_required(folder, LESIONS_FILE)),
        lesion_rows=read_lesion_rows(_required(folder, LESION_TABLE_FILE)),
        summary=_read_json(_required(folder, SUMMARY_FILE)),
        metrics=_read_json(metrics_path) if metrics_path.is_file() else None,
        probability_path=probability_path if probability_path.is_file() else None,
    )


@dataclass(frozen=True)
class VolumeCandidate:
    """A loaded volume that may be the pre- or post-contrast phase: its name and, from DICOM, what is known."""

    key: str
    name: str
    series_description: str = ""
    contrast_agent: str = ""
    temporal_position: int | None = None
    series_number: int | None = None


#: DICOM tags read for each loaded volume ("group,element", as Slicer's DICOM database takes them).
DICOM_TAGS: dict[str, str] = {
    "series_description": "0008,103E",
    "contrast_agent": "0018,0010",
    "temporal_position": "0020,0100",
    "series_number": "0020,0011",
}


def _integer(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def volume_candidate(key: str, name: str, tag_values: Mapping[str, str] | None = None) -> VolumeCandidate:
    """A candidate from a volume's name and the values of :data:`DICOM_TAGS` (by tag; missing tags are empty)."""
    values = {field_name: (tag_values or {}).get(tag, "") or "" for field_name, tag in DICOM_TAGS.items()}
    return VolumeCandidate(key, name, series_description=values["series_description"].strip(),
                           contrast_agent=values["contrast_agent"].strip(),
                           temporal_position=_integer(values["temporal_position"]),
                           series_number=_integer(values["series_number"]))


# Small on purpose: the thorough, vendor-aware classification of DICOM studies lives in io.dicom.
_PRE_WORDS = re.compile(r"\b(pre|precontrast|pre contrast|native|nativ|unenhanced|baseline|mask)\b")
_POST_WORDS = re.compile(r"\b(post|postcontrast|post contrast|1st|first pass|pass 1|gd|gad)\b|\+ ?c\d*\b")
_NOT_A_PHASE_WORDS = re.compile(r"\b(sub|subtract|subtraction|mip|mpr|diff|dwi|adc|t2|localizer|scout)\b")


def _plain_words(text: str) -> str:
    return re.sub(r"[_\-.:/()]+", " ", text.lower())


def _words(candidate: VolumeCandidate) -> str:
    return _plain_words(f"{candidate.name} {candidate.series_description}")


def _named_pre(candidate: VolumeCandidate) -> bool:
    return bool(_PRE_WORDS.search(_words(candidate)))


def _named_post(candidate: VolumeCandidate) -> bool:
    """Post-contrast words and no pre-contrast word ("t1 pre gad" is a pre-contrast series)."""
    return bool(_POST_WORDS.search(_words(candidate))) and not _named_pre(candidate)


def _by_contrast_agent(phases: Sequence[VolumeCandidate]) -> tuple[VolumeCandidate | None, VolumeCandidate | None]:
    """A contrast agent recorded for some volumes only tells pre (without) from post (with)."""
    with_agent = [c for c in phases if c.contrast_agent.strip()]
    without_agent = [c for c in phases if not c.contrast_agent.strip()]
    return (without_agent[0], with_agent[0]) if with_agent and without_agent else (None, None)


def _by_order(phases: Sequence[VolumeCandidate]) -> tuple[VolumeCandidate | None, VolumeCandidate | None]:
    """The first two phases of a split multi-phase series (temporal position), or of exactly two series."""
    timed = sorted((c for c in phases if c.temporal_position is not None), key=lambda c: c.temporal_position)
    if len(timed) >= 2:
        return timed[0], timed[1]
    if len(phases) == 2 and all(c.series_number is not None for c in phases):
        first, second = sorted(phases, key=lambda c: c.series_number)
        return first, second
    return None, None


#: nnU-Net's channel files, as public DCE collections such as MAMA-MIA name their phases: CASE_0000 is the
#: pre-contrast phase, CASE_0001 the first post-contrast one.
_CHANNEL_NAME = re.compile(r"(.+)_(\d{4})")


def _by_channel_name(phases: Sequence[VolumeCandidate]) -> tuple[VolumeCandidate | None, VolumeCandidate | None]:
    """Channel 0000 of one case (pre-contrast) and its next channel (first post-contrast), for volumes named as
    nnU-Net names channel files. Without channel 0000 the names say nothing: channels 0001 and 0002 are two
    post-contrast phases, and reading the first as pre-contrast would give a wrong subtraction."""
    channels = [(match.group(1), int(match.group(2)), c) for c in phases
                if (match := _CHANNEL_NAME.fullmatch(c.name.strip()))]
    if len(channels) < 2 or len({case for case, _, _ in channels}) > 1:
        return None, None
    first, second = sorted(channels, key=lambda channel: channel[1])[:2]
    return (first[2], second[2]) if first[1] == 0 else (None, None)


@dataclass(frozen=True)
class SequenceCandidate:
    """A loaded volume sequence (Slicer's Sequences) that may hold the DCE phases as its frames, in time order."""

    key: str
    name: str
    frames: int
    frame_tag: str = ""  #: the DICOM tag that tells the frames apart, when the importer recorded it


#: Frame tags of sequences that step through time, as 3D Slicer's MultiVolumeImporter names them (its sequence
#: attribute ``MultiVolume.FrameIdentifyingDICOMTagName``). Sequences over b-values, echo times, flip angles or the
#: cardiac cycle are other acquisitions.
TIME_FRAME_TAGS = frozenset({"TriggerTime", "AcquisitionTime", "ContentTime", "SeriesTime", "Time",
                             "TemporalPositionIdentifier", "DeltaStartTime"})
#: Slicer attribute of a volume sequence that names its frame tag (see :data:`TIME_FRAME_TAGS`).
FRAME_TAG_ATTRIBUTE = "MultiVolume.FrameIdentifyingDICOMTagName"


def choose_dce_sequence(candidates: Sequence[SequenceCandidate]) -> str | None:
    """Key of the one volume sequence that can be the DCE series (None when none or several can): two frames or
    more, stepping through time where the frame tag is known, and not named as a subtraction, DWI or other
    series that is no phase. Its first frame is then the pre-contrast phase, its second the first post-contrast
    one (sequences keep their frames in index order: time, for the importer)."""
    dce = [c for c in candidates if c.frames >= 2 and (not c.frame_tag or c.frame_tag in TIME_FRAME_TAGS)
           and not _NOT_A_PHASE_WORDS.search(_plain_words(c.name))]
    return dce[0].key if len(dce) == 1 else None


#: Frames of a DCE volume sequence (:func:`choose_dce_sequence`) that are the pre- and first post-contrast phases.
PHASE_FRAMES = {"pre-contrast": 0, "post-contrast": 1}


def frame_volume_name(sequence_name: str, phase: str) -> str:
    """Name of the volume made of a DCE sequence's frame of ``phase`` (a key of :data:`PHASE_FRAMES`)."""
    return f"{sequence_name} frame {PHASE_FRAMES[phase] + 1} ({phase})"


def choose_pre_post(candidates: Sequence[VolumeCandidate]) -> tuple[str | None, str | None]:
    """Keys of the likely pre- and first post-contrast volumes (None where no choice can be made).

    Evidence in order: words of the name or series description (subtractions, MIPs and other series set aside),
    a contrast agent recorded for one volume only, the order of the phases, nnU-Net's channel names (CASE_0000,
    CASE_0001), and, when only one of two volumes is recognised, the other one.
    """
    phases = [c for c in candidates if not _NOT_A_PHASE_WORDS.search(_words(c))]
    pre = next((c for c in phases if _named_pre(c)), None)
    post = next((c for c in phases if _named_post(c)), None)
    for rule in (_by_contrast_agent, _by_order, _by_channel_name):
        if pre is None and post is None:
            pre, post = rule(phases)
    if (pre is None) != (post is None) and len(phases) == 2:
        other = next(c for c in phases if c is not (pre or post))
        pre, post = (pre, other) if pre else (other, post)
    return (pre.key if pre else None, post.key if post else None)

