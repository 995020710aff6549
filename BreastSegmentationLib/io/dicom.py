"""DICOM study discovery: which series of a study are the pre-contrast and the post-contrast DCE phases.

How :func:`discover_study` decides (every decision keeps its reasons, no single tag decides alone):

1. Walk the folder at any depth and read each file up to its pixel data (pydicom, ``stop_before_pixels``,
   ``force`` off). DICOMDIR index files are skipped; files that are not DICOM, unreadable or truncated files are
   ignored with a warning. An enhanced (multi-frame) image, as Siemens XA and Philips scanners export, counts as
   one slice per frame, with each frame's position, orientation, spacing, temporal position and time taken from
   its functional groups.
2. Group the slices by SeriesInstanceUID. A series holding several phases is split into phases ("virtual series"
   ``<SeriesInstanceUID>#phase<N>``) by TemporalPositionIdentifier (TemporalPositionIndex for an enhanced image's
   frames) or, when slice positions repeat, by TriggerTime, AcquisitionTime or AcquisitionNumber: the first that
   gives as many groups as a position repeats, none of them with a repeated position.
3. Set aside what is not a DCE phase, with its class: non-images by Modality (SEG, SR, PR, ...), secondary captures
   by SOP class, localisers (ImageType LOCALIZER or words such as "loc", "survey", "scout"), subtractions (ImageType
   SUBTRACTION, words "sub", "subtraction"), other contrasts by words (T2, STIR, diffusion, ADC, calibration, MIP) or
   a b-value, and what is no volume (no position, mixed orientations, repeated positions, fewer than 3 slices).
4. Cluster the remaining volumes by identical geometry (size, spacing, orientation, position) and sequence (TR,
   TE, flip angle) within one study: the phases of one DCE acquisition share both. The cluster with the most DCE
   evidence (two phases or more, DCE words such as "dyn", "vibrant", "thrive", "twist", a contrast agent,
   temporal positions) is the DCE group; on a tie, acquired phases win over reformatted ones (ImageType
   REFORMATTED or MPR), and a reformatted DCE group gets a warning. The other volumes are "other MR".
5. Order the DCE group by the first of AcquisitionTime, ContentTime, SeriesTime, TemporalPositionIdentifier,
   TriggerTime, the time in the description ("TT=23.4s"), SeriesNumber that is known and different for every phase.
   The other such keys are checked against that order; a disagreement becomes a warning.
6. Score each phase of the DCE group for being the pre-contrast phase:

   ====  =====================================================  ====  =============================================
   +2    pre word in the description ("pre", "native", "mask")   -3    post word ("post", "1st pass", "+C", "gad")
   +1    the earliest of two phases or more                      -1    a later phase
   +1    no ContrastBolusAgent while a later phase has one       -1    an agent while an earlier phase has none,
                                                                       or on a group of one phase
   +1    TemporalPositionIdentifier 1                            -2    TemporalPositionIdentifier above 1
   ====  =====================================================  ====  =============================================

   An agent on every phase of a group is no evidence (some scanners copy it from the protocol to every phase).
   The pre-contrast phase is the highest-scoring phase with a score of at least 1 (the earliest on a tie); the
   post-contrast phases are the phases after it in time order. Without a pre-contrast phase the posts start at
   the earliest phase with a negative score. What cannot be found is listed in ``missing``.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.pixels
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import InputError
from ..progress import Progress, silent

log = logging.getLogger(__name__)

MIN_VOLUME_SLICES = 3
NO_PRE = "no pre-contrast phase found"
NO_POST = "no post-contrast phase found"

PRE_CONTRAST, POST_CONTRAST, SUBTRACTION = "pre-contrast", "post-contrast", "subtraction"

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
_NON_IMAGE_MODALITIES = {
    "SEG": "segmentation", "SR": "structured report", "PR": "presentation state", "KO": "key object selection",
    "RTSTRUCT": "RT structure set", "REG": "registration", "DOC": "document",
}
_ABSENT_AGENT = {"", "none", "no", "n/a", "na", "0", "-"}

# Word patterns, matched against the description lower-cased with separators turned into single spaces.
_LOCALIZER_WORDS = r"\b(loc|localizer|localiser|scout|survey|tripilot|3 ?plane|aahead|aascout)\b"
_SUBTRACTION_WORDS = r"\b(sub|subs|subtract|subtracted|subtraction)\b"
_OTHER_CONTRAST_WORDS = {
    "T2-weighted": r"\bt2(w|wi|star)?\b",
    "STIR": r"\b(stir|tirm)\b",
    "ADC map": r"\badc\b",
    "diffusion": r"\b(dwi|dw|diff|diffusion|trace|tracew|resolve|b\d{2,4})\b",
    "calibration": r"\b(cal|calib|calibration|asset|refscan|senseref|sense ref|coil ?survey|prescan)\b",
    "MIP": r"\b(mip|mips|mpr)\b",
}
_IMAGE_TYPE_CLASSES = {"DIFFUSION": "diffusion", "TRACEW": "diffusion", "ADC": "ADC map", "MIP": "MIP",
                       "PROJECTION IMAGE": "MIP"}
#: ImageType values of series resampled from others (multi-planar reformats) rather than acquired.
_REFORMAT_TYPES = ("REFORMATTED", "MPR")
_PRE_WORDS = r"\b(pre|precontrast|pre contrast|pregad|pre gad|pre gd|nativ|native|mask|unenhanced|baseline|" \
             r"non ?contrast)\b"
_POST_WORDS = r"(\b(post|postcontrast|postgad|pass|delayed|gad|gd|gado)\b|\b\d+(st|nd|rd|th)\b|\+ ?c\b)"
_DCE_WORDS = r"\b(dyn|dyna|dynamic|dynamics|dce|vibrant|thrive|ethrive|twist|tricks|vibe|fl3d|dynaview|" \
             r"dynaviews|multiphase|multi phase|perfusion|pass|pre|post|ph\d+)\b"
_DESCRIPTION_TIME = r"\btt=(\d+(?:\.\d+)?)s?\b"


def _normalised(description: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9+=.]+", " ", description.lower()).split())


def _match(pattern: str, description: str) -> str | None:
    found = re.search(pattern, _normalised(description))
    return found.group(0).strip() if found else None


# ------------------------------------------------------------------------------------------------ header values
def _value(dataset: pydicom.Dataset, keyword: str) -> object | None:
    """The value of ``keyword``, or None when absent, empty or malformed (pydicom raises on bad values)."""
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, OverflowError):
        return None
    return None if value is None or value == "" else value


def _float(dataset: pydicom.Dataset, keyword: str) -> float | None:
    value = _value(dataset, keyword)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _int(dataset: pydicom.Dataset, keyword: str) -> int | None:
    value = _float(dataset, keyword)
    return None if value is None else int(value)


def _floats(dataset: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = _value(dataset, keyword)
    try:
        numbers = tuple(float(item) for item in value) if value is not None else ()
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    value = _value(dataset, keyword)
    return "" if value is None else str(value).strip()


def _seconds(date: str, time: str) -> float | None:
    """Seconds since day 0 of a DICOM date (optional) and time: comparable across midnight."""
    time = time.replace(":", "").strip()
    try:
        seconds = int(time[0:2]) * 3600 + int(time[2:4] or 0) * 60 + float(time[4:] or 0)
    except ValueError:
        return None
    try:
        day = datetime.datetime.strptime(date.strip()[:8], "%Y%m%d").toordinal()
    except ValueError:
        day = 0
    return day * 86400.0 + seconds


def _moment(dataset: pydicom.Dataset, prefix: str) -> float | None:
    """``<prefix>DateTime`` or ``<prefix>Date`` + ``<prefix>Time`` (the study date when the date is absent)."""
    combined = _text(dataset, f"{prefix}DateTime")
    if combined:
        return _seconds(combined[:8], combined[8:])
    time = _text(dataset, f"{prefix}Time")
    if not time:
        return None
    return _seconds(_text(dataset, f"{prefix}Date") or _text(dataset, "StudyDate"), time)


# ------------------------------------------------------------------------------------------------ reading files
@dataclass(frozen=True)
class _Slice:
    """The header values of one DICOM file that discovery uses."""

    path: Path
    study_uid: str
    series_uid: str
    instance_uid: str
    modality: str
    sop_class_uid: str
    description: str
    series_number: int | None
    instance_number: int | None
    image_type: tuple[str, ...]
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    rows: int | None
    columns: int | None
    frames: int
    acquisition_time: float | None
    content_time: float | None
    series_time: float | None
    trigger_time: float | None
    temporal_position: int | None
    temporal_positions: int | None
    acquisition_number: int | None
    contrast_agent: str
    sequence: tuple[float | None, ...]  #: RepetitionTime, EchoTime, FlipAngle
    b_value: float | None
    frame: int | None = None  #: the frame's number (from 0) in an enhanced multi-frame file; None for a single slice
    rescale: tuple[float, float] = (1.0, 0.0)  #: (slope, intercept) of the stored values: the frame's, or the file's

    @classmethod
    def of(cls, path: Path, dataset: pydicom.Dataset) -> _Slice:
        agent = _text(dataset, "ContrastBolusAgent")
        image_type = _value(dataset, "ImageType")
        image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type or ())
        return cls(
            path=path,
            study_uid=_text(dataset, "StudyInstanceUID"),
            series_uid=_text(dataset, "SeriesInstanceUID"),
            instance_uid=_text(dataset, "SOPInstanceUID") or str(path),
            modality=_text(dataset, "Modality").upper(),
            sop_class_uid=_text(dataset, "SOPClassUID"),
            description=_text(dataset, "SeriesDescription") or _text(dataset, "ProtocolName"),
            series_number=_int(dataset, "SeriesNumber"),
            instance_number=_int(dataset, "InstanceNumber"),
            image_type=tuple(str(item).strip().upper() for item in image_type),
            position=_floats(dataset, "ImagePositionPatient", 3),
            orientation=_floats(dataset, "ImageOrientationPatient", 6),
            pixel_spacing=_floats(dataset, "PixelSpacing", 2),
            rows=_int(dataset, "Rows"),
            columns=_int(dataset, "Columns"),
            frames=_int(dataset, "NumberOfFrames") or 1,
            acquisition_time=_moment(dataset, "Acquisition"),
            content_time=_moment(dataset, "Content"),
            series_time=_moment(dataset, "Series"),
            trigger_time=_float(dataset, "TriggerTime"),
            temporal_position=_int(dataset, "TemporalPositionIdentifier"),
            temporal_positions=_int(dataset, "NumberOfTemporalPositions"),
            acquisition_number=_int(dataset, "AcquisitionNumber"),
            contrast_agent="" if agent.lower() in _ABSENT_AGENT else agent,
            sequence=(_float(dataset, "RepetitionTime"), _float(dataset, "EchoTime"), _float(dataset, "FlipAngle")),
            b_value=_float(dataset, "DiffusionBValue"),
            rescale=_slope_and_intercept(pydicom.Dataset(), dataset),
        )

    @classmethod
    def frames_of(cls, path: Path, dataset: pydicom.Dataset) -> list[_Slice]:
        """One slice per frame of an enhanced multi-frame image: where the classic tags sit in the file's
        functional groups (the frame's own, else the shared ones), the frame's values replace the file's."""
        whole = cls.of(path, dataset)
        frames = []
        for number, groups in enumerate(dataset.PerFrameFunctionalGroupsSequence):
            timing = _functional_group(dataset, groups, "MRTimingAndRelatedParametersSequence")
            echo = _functional_group(dataset, groups, "MREchoSequence")
            content = _functional_group(dataset, groups, "FrameContentSequence")
            sequence = (_float(timing, "RepetitionTime"), _float(echo, "EffectiveEchoTime"),
                        _float(timing, "FlipAngle"))
            temporal_position = _int(content, "TemporalPositionIndex")
            transform = _functional_group(dataset, groups, "PixelValueTransformationSequence")
            frames.append(replace(
                whole, instance_uid=f"{whole.instance_uid}#frame{number + 1}", frames=1, frame=number,
                rescale=_slope_and_intercept(transform, dataset),
                position=_floats(_functional_group(dataset, groups, "PlanePositionSequence"),
                                 "ImagePositionPatient", 3),
                orientation=_floats(_functional_group(dataset, groups, "PlaneOrientationSequence"),
                                    "ImageOrientationPatient", 6),
                pixel_spacing=_floats(_functional_group(dataset, groups, "PixelMeasuresSequence"), "PixelSpacing", 2),
                acquisition_time=_moment(content, "FrameAcquisition") or whole.acquisition_time,
                temporal_position=whole.temporal_position if temporal_position is None else temporal_position,
                sequence=tuple(mine if mine is not None else file_wide
                               for mine, file_wide in zip(sequence, whole.sequence))))
        return frames


def _functional_group(dataset: pydicom.Dataset, frame: pydicom.Dataset | None, keyword: str) -> pydicom.Dataset:
    """The item of the functional group ``keyword`` that applies to one frame of an enhanced image: the frame's own
    (``frame``: its item of the per-frame functional groups), else the shared one; an empty dataset when neither
    has it."""
    shared = _value(dataset, "SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    for groups in (frame or pydicom.Dataset(), shared[0]):
        items = _value(groups, keyword)
        if items:
            return items[0]
    return pydicom.Dataset()


def _is_enhanced_image(dataset: pydicom.Dataset) -> bool:
    """An enhanced (multi-frame) image whose frames are slices, such as Enhanced MR; not a DICOM SEG's frames."""
    return ((_int(dataset, "NumberOfFrames") or 1) > 1
            and _value(dataset, "PerFrameFunctionalGroupsSequence") is not None
            and _text(dataset, "Modality").upper() not in _NON_IMAGE_MODALITIES)


class _Ignored(Exception):
    """A file discovery leaves out; ``quiet`` for files that simply are not DICOM."""

    def __init__(self, reason: str, quiet: bool = False):
        super().__init__(reason)
        self.quiet = quiet


def _is_image_storage(dataset: pydicom.Dataset) -> bool:
    name = UID(_text(dataset.file_meta, "MediaStorageSOPClassUID") if hasattr(dataset, "file_meta") else "").name
    return "Image Storage" in name or name == "Segmentation Storage"


def _truncation(dataset: pydicom.Dataset, handle: BinaryIO, file_size: int) -> str | None:
    """Why the file looks cut short, or None.

    pydicom accepts a short last value or a file ending anywhere silently, and stops before the pixel data without
    reading it, so a truncated file would otherwise look whole; ``handle`` is left at the start of the pixel data.
    """
    last = dataset.get_item(max(dataset.keys())) if len(dataset) else None
    if isinstance(last, RawDataElement) and last.length != _UNDEFINED_LENGTH and len(last.value or b"") < last.length:
        return f"header cut short in element {last.tag}"
    if handle.tell() >= file_size and _is_image_storage(dataset):
        return "an image file that ends before its pixel data"
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    rows, columns, bits = (_int(dataset, keyword) for keyword in ("Rows", "Columns", "BitsAllocated"))
    if syntax not in _NATIVE_SYNTAXES or not (rows and columns and bits):
        return None
    samples = _int(dataset, "SamplesPerPixel") or 1
    frames = _int(dataset, "NumberOfFrames") or 1
    expected = math.ceil(rows * columns * samples * frames * bits / 8)
    element_header = 8 if syntax == ImplicitVRLittleEndian else 12
    missing = expected + element_header - (file_size - handle.tell())
    return f"{missing} bytes of pixel data missing" if missing > 0 else None


def _read_slices_of(path: Path) -> list[_Slice]:
    """The slices of one file: itself, or each frame of an enhanced multi-frame image."""
    try:
        with path.open("rb") as handle:
            dataset = pydicom.dcmread(handle, stop_before_pixels=True)
            truncation = _truncation(dataset, handle, path.stat().st_size)
    except InvalidDicomError:
        raise _Ignored("not DICOM", quiet=True) from None
    except Exception as error:  # pydicom raises many types on corrupt files; one bad file must not stop discovery
        raise _Ignored(f"unreadable DICOM ({type(error).__name__}: {error})") from None
    if truncation:
        raise _Ignored(f"truncated DICOM file ({truncation})")
    if _text(dataset.file_meta, "MediaStorageSOPClassUID") == _DICOMDIR_SOP_CLASS:
        raise _Ignored("DICOMDIR (an index, not an image)", quiet=True)
    if not _text(dataset, "SeriesInstanceUID"):
        raise _Ignored("DICOM file without SeriesInstanceUID")
    if not _is_enhanced_image(dataset):
        return [_Slice.of(path, dataset)]
    frames = len(dataset.PerFrameFunctionalGroupsSequence)
    if frames != _int(dataset, "NumberOfFrames"):
        raise _Ignored(f"per-frame functional groups for {frames} of {_int(dataset, 'NumberOfFrames')} frames")
    return _Slice.frames_of(path, dataset)


def _read_slices(folder: Path, progress: Progress, warnings: list[str]) -> tuple[list[_Slice], int]:
    """Every usable DICOM slice under ``folder`` and the number of files looked at."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file() and path.name.upper() != "DICOMDIR")
    slices: dict[str, _Slice] = {}
    not_dicom: list[str] = []
    for path in progress.track(paths, "reading DICOM headers"):
        try:
            items = _read_slices_of(path)
        except _Ignored as ignored:
            if ignored.quiet:
                not_dicom.append(path.relative_to(folder).as_posix())
            else:
                _warn(warnings, f"{path}: {ignored}: ignored")
            continue
        if items[0].instance_uid in slices:
            _warn(warnings, f"{path}: same SOPInstanceUID as {slices[items[0].instance_uid].path}: ignored")
            continue
        slices.update((item.instance_uid, item) for item in items)
    if not_dicom and slices:
        shown = ", ".join(not_dicom[:5]) + (", ..." if len(not_dicom) > 5 else "")
        _warn(warnings, f"ignored {len(not_dicom)} file(s) that are not DICOM images: {shown}")
    return list(slices.values()), len(paths)


def _warn(warnings: list[str], message: str) -> None:
    log.warning(message)
    warnings.append(message)


# ------------------------------------------------------------------------------------------------ phases
@dataclass(frozen=True)
class PhaseGeometry:
    """Voxel grid of one phase: what the phases of one DCE acquisition share."""

    rows: int
    columns: int
    slices: int
    pixel_spacing: tuple[float, float]  #: between rows, between columns (mm), as DICOM PixelSpacing
    slice_spacing: float
    orientation: tuple[float, ...]  #: ImageOrientationPatient
    origin: tuple[float, float, float]  #: position of the first slice along the slice normal

    def matches(self, other: PhaseGeometry) -> bool:
        return (self.rows, self.columns, self.slices) == (other.rows, other.columns, other.slices) and np.allclose(
            np.r_[self.pixel_spacing, self.slice_spacing, self.orientation, self.origin],
            np.r_[other.pixel_spacing, other.slice_spacing, other.orientation, other.origin], atol=1e-2)

    def describe(self) -> str:
        return (f"{self.columns}x{self.rows}x{self.slices}, {self.pixel_spacing[1]:.2f}x{self.pixel_spacing[0]:.2f}"
                f"x{self.slice_spacing:.2f} mm")


def _ordered_geometry(slices: Sequence[_Slice]) -> tuple[list[_Slice], PhaseGeometry | None, str | None, str | None]:
    """Slices sorted along the slice normal, their grid, why there is no grid, and a warning (uneven spacing)."""
    by_instance = sorted(slices, key=lambda item: (item.instance_number or 0, item.path, item.frame or 0))
    first = by_instance[0]
    if len(slices) == 1 and first.frames > 1:
        return by_instance, None, f"a multi-frame object ({first.frames} frames in one file)", None
    if any(item.position is None or item.orientation is None or item.pixel_spacing is None for item in slices):
        return by_instance, None, "no slice position, orientation or pixel spacing", None
    if len({np.round(item.orientation, 3).tobytes() for item in slices}) > 1:
        return by_instance, None, "slices in different orientations", None
    if len({(item.rows, item.columns, np.round(item.pixel_spacing, 3).tobytes()) for item in slices}) > 1:
        return by_instance, None, "slices of different sizes or pixel spacings", None
    row, column = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, column)
    ordered = sorted(slices, key=lambda item: float(np.dot(item.position, normal)))
    steps = np.diff([float(np.dot(item.position, normal)) for item in ordered])
    if len(steps) and steps.min() < 1e-3:
        return ordered, None, "repeated slice positions that no tag separates into phases", None
    spacing = float(np.median(steps)) if len(steps) else 0.0
    uneven = None
    if len(steps) and np.abs(steps - spacing).max() > 0.1 * spacing:
        uneven = f"uneven slice spacing ({steps.min():.2f} to {steps.max():.2f} mm): a slice may be missing"
    geometry = PhaseGeometry(first.rows or 0, first.columns or 0, len(ordered), tuple(first.pixel_spacing),
                             spacing, tuple(first.orientation), tuple(ordered[0].position))
    return ordered, geometry, None, uneven


def _temporal_tag(frame: int | None) -> str:
    """Where a slice's temporal position comes from: an enhanced image's frames carry it in their Frame Content."""
    return "TemporalPositionIdentifier" if frame is None else "TemporalPositionIndex"


def _split_phases(slices: list[_Slice]) -> tuple[list[list[_Slice]], str | None]:
    """The phases of one series and the tag that separated them (None: one phase)."""
    positions = [None if item.position is None else tuple(np.round(item.position, 2)) for item in slices]
    if None in positions:
        return [slices], None
    unique_positions = len(set(positions))
    temporal = {item.temporal_position for item in slices}
    if unique_positions == len(slices) and (len(temporal) < 2 or None in temporal):
        return [slices], None
    temporal_tag = _temporal_tag(slices[0].frame)
    keys: tuple[tuple[str, Callable[[_Slice], object]], ...] = (
        (temporal_tag, lambda item: item.temporal_position),
        ("TriggerTime", lambda item: item.trigger_time),
        ("AcquisitionTime", lambda item: item.acquisition_time),
        ("AcquisitionNumber", lambda item: item.acquisition_number),
    )
    repeats = max(positions.count(position) for position in set(positions))
    for label, key in keys:
        values = [key(item) for item in slices]
        if None in values or len(set(values)) < 2:
            continue
        groups: dict[object, list[int]] = {}
        for index, value in enumerate(values):
            groups.setdefault(value, []).append(index)
        distinct = all(len({positions[index] for index in indices}) == len(indices) for indices in groups.values())
        # As many groups as a position repeats: rules out a tag that differs per slice (one group per slice).
        if distinct and (len(groups) == repeats or label == temporal_tag):
            return [[slices[index] for index in groups[value]] for value in sorted(groups)], label
    return [slices], None


def _common(values: Sequence[object]) -> object | None:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def _earliest(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return min(known) if known else None


@dataclass
class SeriesInfo:
    """One phase: a series, or one phase of a series holding several (``uid`` ``<SeriesInstanceUID>#phase<N>``)."""

    uid: str
    series_uid: str
    study_uid: str
    description: str
    modality: str
    sop_class_uid: str
    series_number: int | None
    image_type: tuple[str, ...]
    files: tuple[Path, ...]  #: sorted along the slice normal when the phase is a volume
    frames: tuple[int | None, ...]  #: for each of ``files``, the frame it holds (None: the whole single-frame file)
    rescales: tuple[tuple[float, float], ...]  #: for each of ``files``, its (frame's) stored values' (slope, intercept)
    n_slices: int
    acquisition_time: float | None
    content_time: float | None
    series_time: float | None
    trigger_time: float | None
    temporal_position: int | None
    temporal_positions: int | None
    contrast_agent: str
    sequence: tuple[float | None, ...]
    b_value: float | None
    geometry: PhaseGeometry | None
    geometry_problem: str | None
    classification: str = "unclassified"
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, uid: str, slices: list[_Slice]) -> tuple[SeriesInfo, str | None]:
        """The phase made of ``slices`` and a warning about its slices (or None)."""
        ordered, geometry, problem, uneven = _ordered_geometry(slices)
        first = ordered[0]
        info = cls(
            uid=uid, series_uid=first.series_uid, study_uid=first.study_uid, description=first.description,
            modality=first.modality, sop_class_uid=first.sop_class_uid, series_number=first.series_number,
            image_type=first.image_type, files=tuple(item.path for item in ordered),
            frames=tuple(item.frame for item in ordered), rescales=tuple(item.rescale for item in ordered),
            n_slices=sum(item.frames for item in ordered),
            acquisition_time=_earliest([item.acquisition_time for item in ordered]),
            content_time=_earliest([item.content_time for item in ordered]),
            series_time=_earliest([item.series_time for item in ordered]),
            trigger_time=_earliest([item.trigger_time for item in ordered]),
            temporal_position=_common([item.temporal_position for item in ordered]),
            temporal_positions=_common([item.temporal_positions for item in ordered]),
            contrast_agent=next((item.contrast_agent for item in ordered if item.contrast_agent), ""),
            sequence=first.sequence, b_value=first.b_value, geometry=geometry, geometry_problem=problem,
        )
        return info, (f"{info.label}: {uneven}" if uneven else None)

    @property
    def label(self) -> str:
        return f"series {self.series_number} '{self.description}'"

    @property
    def description_time(self) -> float | None:
        found = re.search(_DESCRIPTION_TIME, _normalised(self.description))
        return float(found.group(1)) if found else None

    def same_acquisition(self, other: SeriesInfo) -> bool:
        """Same study, identical geometry and sequence parameters (where both are known)."""
        same_sequence = all(mine is None or theirs is None or math.isclose(mine, theirs, rel_tol=1e-3, abs_tol=1e-3)
                            for mine, theirs in zip(self.sequence, other.sequence))
        return (self.study_uid == other.study_uid and same_sequence and self.geometry is not None
                and other.geometry is not None and self.geometry.matches(other.geometry))

    def to_dict(self, root: Path) -> dict:
        folder = self.files[0].parent
        return {
            "id": self.uid,
            "series_instance_uid": self.series_uid,
            "series_description": self.description,
            "series_number": self.series_number,
            "modality": self.modality,
            "class": self.classification,
            "n_slices": self.n_slices,
            "temporal_position": self.temporal_position,
            "acquisition_time": _clock(self.acquisition_time),
            "contrast_agent": self.contrast_agent or None,
            "folder": folder.relative_to(root).as_posix() if folder.is_relative_to(root) else str(folder),
            "reasons": list(self.reasons),
        }


def _clock(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds %= 86400.0
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:05.2f}"


def _phases(slices: list[_Slice], warnings: list[str]) -> list[SeriesInfo]:
    by_series: dict[str, list[_Slice]] = {}
    for item in slices:
        by_series.setdefault(item.series_uid, []).append(item)
    phases = []
    for series_uid, members in by_series.items():
        groups, split_by = _split_phases(members)
        for number, group in enumerate(groups, start=1):
            uid = series_uid if split_by is None else f"{series_uid}#phase{number}"
            phase, warning = SeriesInfo.of(uid, group)
            if split_by is not None:
                phase.reasons.append(f"phase {number} of {len(groups)} in one series, split by {split_by}")
            if warning:
                _warn(warnings, warning)
            phases.append(phase)
    return sorted(phases, key=lambda phase: (phase.series_number or 0, phase.acquisition_time or 0.0, phase.uid))


# ------------------------------------------------------------------------------------------------ classification
def _non_dce_class(phase: SeriesInfo) -> tuple[str, str] | None:
    """(class, reason) when ``phase`` is certainly not a DCE phase, else None."""
    description = phase.description
    if phase.modality in _NON_IMAGE_MODALITIES:
        return _NON_IMAGE_MODALITIES[phase.modality], f"Modality {phase.modality}"
    if phase.modality and phase.modality != "MR":
        return "non-MR image", f"Modality {phase.modality}"
    if phase.sop_class_uid.startswith(_SECONDARY_CAPTURE_PREFIX):
        return "secondary capture", f"SOP class {phase.sop_class_uid} (Secondary Capture)"
    if "LOCALIZER" in phase.image_type:
        return "localizer", "ImageType LOCALIZER"
    if word := _match(_LOCALIZER_WORDS, description):
        return "localizer", f"description '{description}' has the localizer word '{word}'"
    if "SUBTRACTION" in phase.image_type:
        return SUBTRACTION, f"ImageType {'/'.join(phase.image_type)}"
    if word := _match(_SUBTRACTION_WORDS, description):
        return SUBTRACTION, f"description '{description}' has the subtraction word '{word}'"
    for name, pattern in _OTHER_CONTRAST_WORDS.items():
        if word := _match(pattern, description):
            return name, f"description '{description}' has the word '{word}'"
    for image_type, name in _IMAGE_TYPE_CLASSES.items():
        if image_type in phase.image_type:
            return name, f"ImageType {'/'.join(phase.image_type)}"
    if phase.b_value:
        return "diffusion", f"DiffusionBValue {phase.b_value:g}"
    if phase.geometry is None:
        return "not a volume", phase.geometry_problem or "no geometry"
    if phase.n_slices < MIN_VOLUME_SLICES:
        return "too few slices", f"{phase.n_slices} slice(s), a volume needs at least {MIN_VOLUME_SLICES}"
    return None


def _clusters(volumes: list[SeriesInfo]) -> list[list[SeriesInfo]]:
    """Volumes grouped by identical geometry and sequence (the phases of one acquisition)."""
    clusters: list[list[SeriesInfo]] = []
    for volume in volumes:
        home = next((cluster for cluster in clusters if cluster[0].same_acquisition(volume)), None)
        if home is None:
            clusters.append([volume])
        else:
            home.append(volume)
    return clusters


def _reformatted(cluster: list[SeriesInfo]) -> bool:
    """Whether the volumes of ``cluster`` are reformats (resampled from other series), by their ImageType."""
    return all(any(kind in phase.image_type for kind in _REFORMAT_TYPES) for phase in cluster)


def _dce_evidence(cluster: list[SeriesInfo]) -> tuple[int, list[str]]:
    """How strongly a cluster of volumes looks like a DCE acquisition, and why."""
    evidence = []
    if len(cluster) >= 2:
        evidence.append((2, f"{len(cluster)} phases with identical geometry and sequence"))
    words = sorted({word for phase in cluster if (word := _match(_DCE_WORDS, phase.description))})
    if words:
        evidence.append((1, f"DCE words in the descriptions ({', '.join(words)})"))
    if any(phase.contrast_agent for phase in cluster):
        evidence.append((1, "ContrastBolusAgent set"))
    if any(phase.temporal_position is not None or (phase.temporal_positions or 0) > 1 for phase in cluster):
        evidence.append((1, "temporal positions"))
    return sum(score for score, _ in evidence), [reason for _, reason in evidence]


_ORDER_KEYS: tuple[tuple[str, Callable[[SeriesInfo], float | None]], ...] = (
    ("acquisition time", lambda phase: phase.acquisition_time),
    ("content time", lambda phase: phase.content_time),
    ("series time", lambda phase: phase.series_time),
    ("temporal position", lambda phase: phase.temporal_position),
    ("trigger time", lambda phase: phase.trigger_time),
    ("time in the description", lambda phase: phase.description_time),
    ("series number", lambda phase: phase.series_number),
)


def _tells_apart(values: list[float | None]) -> bool:
    return None not in values and len(set(values)) == len(values)


def _time_order(phases: list[SeriesInfo], warnings: list[str]) -> tuple[list[SeriesInfo], str]:
    """The phases in acquisition order and a phrase saying how the order was found."""
    usable = [(label, key) for label, key in _ORDER_KEYS if _tells_apart([key(phase) for phase in phases])]
    if not usable:
        _warn(warnings, f"no time tag tells the {len(phases)} DCE phases apart: order unknown, series order used")
        return phases, "series order"
    label, key = usable[0]
    ordered = sorted(phases, key=key)
    agreeing = []
    for other_label, other_key in usable[1:]:
        if sorted(phases, key=other_key) == ordered:
            agreeing.append(other_label)
        else:
            _warn(warnings, f"DCE phase order by {label} disagrees with the order by {other_label}")
    return ordered, label + (f", confirmed by {', '.join(agreeing)}" if agreeing else "")


def _pre_evidence(rank: int, ordered: list[SeriesInfo], order: str) -> list[tuple[int, str]]:
    """Scored evidence that ``ordered[rank]`` is the pre-contrast phase (see the module docstring)."""
    phase, count = ordered[rank], len(ordered)
    evidence: list[tuple[int, str]] = []
    if word := _match(_PRE_WORDS, phase.description):
        evidence.append((2, f"description '{phase.description}' has the pre-contrast word '{word}'"))
    if word := _match(_POST_WORDS, phase.description):
        evidence.append((-3, f"description '{phase.description}' has the post-contrast word '{word}'"))
    if count >= 2:
        evidence.append((1, f"earliest of {count} DCE phases by {order}") if rank == 0
                        else (-1, f"phase {rank + 1} of {count} by {order}"))
    agents = [bool(other.contrast_agent) for other in ordered]
    if count >= 2 and all(agents):
        evidence.append((0, "ContrastBolusAgent on every phase: no evidence either way"))
    elif not phase.contrast_agent and any(agents[rank + 1:]):
        evidence.append((1, "no ContrastBolusAgent while a later phase has one"))
    elif phase.contrast_agent and (count == 1 or not all(agents[:rank])):
        evidence.append((-1, f"ContrastBolusAgent '{phase.contrast_agent}'"))
    temporal_tag = _temporal_tag(phase.frames[0])
    if phase.temporal_position == 1:
        evidence.append((1, f"{temporal_tag} 1"))
    elif phase.temporal_position is not None and phase.temporal_position > 1:
        evidence.append((-2, f"{temporal_tag} {phase.temporal_position}"))
    return evidence


def _explained(evidence: list[tuple[int, str]]) -> list[str]:
    return [f"{reason} ({score:+d})" if score else reason for score, reason in evidence]


@dataclass
class StudyDiscovery:
    """What :func:`discover_study` found: the pre-contrast phase, the posts in time order, and the rest."""

    folder: Path
    pre: SeriesInfo | None
    posts: list[SeriesInfo]
    subtraction: list[SeriesInfo]
    others: list[SeriesInfo]
    missing: list[str]
    warnings: list[str]
    n_files: int  #: files looked at
    n_dicom: int  #: DICOM files used

    @property
    def first_post(self) -> SeriesInfo | None:
        return self.posts[0] if self.posts else None

    def to_dict(self) -> dict:
        """A JSON-able summary (what ``breastseg inspect`` prints)."""
        def described(phase: SeriesInfo | None) -> dict | None:
            return None if phase is None else phase.to_dict(self.folder)

        return {
            "folder": str(self.folder),
            "pre_contrast": described(self.pre),
            "first_post_contrast": described(self.first_post),
            "post_contrast": [described(phase) for phase in self.posts],
            "subtraction": [described(phase) for phase in self.subtraction],
            "others": [described(phase) for phase in self.others],
            "missing": list(self.missing),
            "warnings": list(self.warnings),
            "files": {"looked_at": self.n_files, "dicom_used": self.n_dicom},
        }


def _assign_dce(ordered: list[SeriesInfo], order: str, group_reason: str) -> tuple[SeriesInfo | None,
                                                                                     list[SeriesInfo]]:
    """Pick the pre-contrast phase and the posts of one ordered DCE group; label every phase."""
    evidence = [_pre_evidence(rank, ordered, order) for rank in range(len(ordered))]
    scores = [sum(score for score, _ in items) for items in evidence]
    for phase, items, score in zip(ordered, evidence, scores):
        phase.reasons.extend([group_reason, *_explained(items), f"pre-contrast score {score:+d}"])
    best = max(range(len(ordered)), key=lambda rank: (scores[rank], -rank))
    if scores[best] >= 1:
        pre, first_post = ordered[best], best + 1
        pre.classification = PRE_CONTRAST
        pre.reasons.append("chosen as pre-contrast: highest score of at least +1")
    else:
        pre = None
        first_post = next((rank for rank, score in enumerate(scores) if score < 0), len(ordered))
    posts = ordered[first_post:]
    for number, phase in enumerate(posts, start=1):
        phase.classification = POST_CONTRAST
        after = "after the pre-contrast phase" if pre else "with post-contrast evidence, no pre-contrast phase"
        phase.reasons.append(f"post-contrast phase {number} of {len(posts)}: "
                             f"{'first' if number == 1 else 'later'} phase {after} by {order}")
    for phase in ordered:
        if phase.classification not in (PRE_CONTRAST, POST_CONTRAST):
            phase.classification = "DCE phase, unassigned"
            phase.reasons.append("before the chosen phases, or no evidence of its timing relative to contrast")
    return pre, posts


def _classify(phases: list[SeriesInfo], warnings: list[str]) -> tuple[SeriesInfo | None, list[SeriesInfo]]:
    """Label every phase; return the pre-contrast phase and the posts in order."""
    volumes = []
    for phase in phases:
        found = _non_dce_class(phase)
        if found is None:
            volumes.append(phase)
        else:
            phase.classification, reason = found
            phase.reasons.append(reason)
    candidates = [(cluster, *_dce_evidence(cluster)) for cluster in _clusters(volumes)]
    candidates = [candidate for candidate in candidates if candidate[1] >= 1]
    if not candidates:
        for phase in volumes:
            phase.classification = "other MR"
            phase.reasons.append("a volume without DCE evidence")
        return None, []
    dce, _, evidence = max(candidates, key=lambda candidate: (candidate[1], not _reformatted(candidate[0]),
                                                              len(candidate[0])))
    if _reformatted(dce):
        _warn(warnings, f"the DCE phases are reformatted series (ImageType {'/'.join(dce[0].image_type)}): the "
                        "models learnt from acquired slices, and studies resampled onto turned grids had twice the "
                        "false-positive lesions on phantom studies; use the acquired series where there are any")
    for phase in volumes:
        if not any(phase is member for member in dce):
            phase.classification = "other MR"
            phase.reasons.append(f"geometry or sequence differs from the DCE phases ({dce[0].geometry.describe()})")
    ordered, order = _time_order(dce, warnings)
    group_reason = (f"one of {len(dce)} DCE phase(s) of {dce[0].geometry.describe()}, "
                    f"TR/TE/flip {'/'.join('?' if value is None else f'{value:g}' for value in dce[0].sequence)}"
                    f" ({'; '.join(evidence)})")
    return _assign_dce(ordered, order, group_reason)


# ------------------------------------------------------------------------------------------------ public API
def discover_study(folder: str | os.PathLike, progress: Progress | None = None) -> StudyDiscovery:
    """Read the headers of every DICOM file under ``folder`` and find the DCE phases (see the module docstring).

    Raises :class:`InputError` when the folder does not exist or holds no readable DICOM file. Missing phases
    are not errors: they are listed in :attr:`StudyDiscovery.missing`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found" if not folder.exists() else "not a folder", folder)
    progress = progress or silent()
    warnings: list[str] = []
    slices, n_files = _read_slices(folder, progress, warnings)
    if not slices:
        raise InputError(f"no readable DICOM file found ({n_files} file(s) looked at)", folder)
    studies = {item.study_uid for item in slices}
    if len(studies) > 1:
        _warn(warnings, f"the folder holds {len(studies)} studies: DCE phases are taken from one of them")
    phases = _phases(slices, warnings)
    pre, posts = _classify(phases, warnings)
    missing = ([] if pre else [NO_PRE]) + ([] if posts else [NO_POST])
    subtraction = [phase for phase in phases if phase.classification == SUBTRACTION]
    others = [phase for phase in phases
              if phase is not pre and phase.classification not in (POST_CONTRAST, SUBTRACTION)]
    return StudyDiscovery(folder, pre, posts, subtraction, others, missing, warnings, n_files, len(slices))


def read_phase(series: SeriesInfo) -> sitk.Image:
    """Read exactly the files of one phase as a 3-D float32 image (real-world values, LPS geometry).

    The files are read in the order of ``series.files`` (sorted along the slice normal), so one phase of a
    series holding several phases reads on its own; the result is right-handed (slices along the normal of
    ImageOrientationPatient).
    """
    if series.geometry is None:
        raise InputError(f"{series.label} is not a 3-D volume: {series.geometry_problem}", series.files[0].parent)
    if any(frame is not None for frame in series.frames):
        return _read_frames(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read {series.label}: {error}", series.files[0].parent) from error
    return sitk.Cast(image, sitk.sitkFloat32)


def is_enhanced_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an enhanced multi-frame DICOM image (frames as slices), which SimpleITK reads as 4-D."""
    try:
        return _is_enhanced_image(pydicom.dcmread(path, stop_before_pixels=True))
    except Exception:  # pydicom raises many types on corrupt files; such a file is no enhanced image to read here
        return False


def read_enhanced_volume(path: str | os.PathLike) -> sitk.Image:
    """The one 3-D volume of an enhanced multi-frame file (a series exported as one file), as :func:`read_phase`
    reads it; a file whose frames hold several phases is refused, naming the command that picks one."""
    path = Path(path)
    try:
        slices = _read_slices_of(path)
    except _Ignored as ignored:
        raise InputError(str(ignored), path) from None
    phases = _phases(slices, [])
    if len(phases) > 1:
        raise InputError(f"one multi-frame file holds {len(phases)} phases, one volume is needed; "
                         f"'breastseg segment --dicom {path.parent}' picks the pre- and post-contrast phases", path)
    return read_phase(phases[0])


def _rescale(transform: pydicom.Dataset, header: pydicom.Dataset, keyword: str, default: float) -> float:
    """A frame's rescale value: its Pixel Value Transformation group's, else the file's, else ``default``."""
    value = _float(transform, keyword)
    value = _float(header, keyword) if value is None else value
    return default if value is None else value


def _slope_and_intercept(transform: pydicom.Dataset, header: pydicom.Dataset) -> tuple[float, float]:
    """A frame's (or a file's, given an empty ``transform``) rescale slope and intercept (:func:`_rescale`)."""
    return _rescale(transform, header, "RescaleSlope", 1.0), _rescale(transform, header, "RescaleIntercept", 0.0)


def _read_frames(series: SeriesInfo) -> sitk.Image:
    """A phase made of frames of enhanced multi-frame files: each frame's stored values through its own rescale
    (the Pixel Value Transformation functional group, read at discovery), on the phase's grid.

    Written here because SimpleITK (GDCM) reads a multi-frame file as one volume of all its frames, so a file that
    holds every phase of a dynamic series cannot be read one phase at a time; pydicom decodes only the frames asked
    for.
    """
    geometry = series.geometry
    volume = np.empty((len(series.files), geometry.rows, geometry.columns), np.float32)
    by_file: dict[Path, list[tuple[int, int]]] = {}
    for slot, (path, frame) in enumerate(zip(series.files, series.frames)):
        by_file.setdefault(path, []).append((slot, frame or 0))
    for path, wanted in by_file.items():
        try:
            stored = pydicom.pixels.iter_pixels(path, indices=[frame for _, frame in wanted])
            for (slot, _), values in zip(wanted, stored, strict=True):
                slope, intercept = series.rescales[slot]
                volume[slot] = values * slope + intercept
        except Exception as error:  # pydicom raises many types on undecodable pixel data; name the file instead
            reason = " ".join(str(error).split())  # one line: pydicom lists the missing decoders line by line
            raise InputError(f"cannot read {series.label}: {type(error).__name__}: {reason}", path) from error
    row, column = np.array(geometry.orientation[:3]), np.array(geometry.orientation[3:])
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(geometry.origin)
    image.SetSpacing((geometry.pixel_spacing[1], geometry.pixel_spacing[0], geometry.slice_spacing))
    image.SetDirection(tuple(np.column_stack([row, column, np.cross(row, column)]).ravel()))
    return image
