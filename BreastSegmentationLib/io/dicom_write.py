"""Synthetic DICOM DCE-MRI studies, written the way the main vendors write them.

Tests and the phantom generator call :func:`write_dce_study` to get studies that exercise the discovery in
:mod:`.dicom`. Every image is one file per slice (classic MR Image Storage, explicit VR little endian) except the
DCE phases of the enhanced conventions. Pixels are 12-bit unsigned with a RescaleSlope/RescaleIntercept shared by
all DCE phases (so that phases stay comparable), and the geometry comes from each SimpleITK image (LPS, as DICOM).
Conventions (:data:`CONVENTIONS`):

- ``ge_multiphase``: one series holding every phase ("Ax Vibrant MultiPhase") with TemporalPositionIdentifier,
  NumberOfTemporalPositions and TriggerTime; ContrastBolusAgent on every file, as GE copies it from the protocol.
- ``siemens``: one series per phase, "ax dyn pre", "ax dyn 1st pass", ...; agent on the posts only.
- ``siemens_twist``: one series per phase, agent on every phase, time in the description ("..._TT=23.4s").
- ``philips``: one series per phase, all named "Dyn_eTHRIVE", with temporal positions; agent on the posts only.
- ``siemens_xa``: as ``siemens``, each phase one Enhanced MR file (multi-frame), as syngo XA scanners export.
- ``philips_enhanced``: every phase in one Enhanced MR file, frames told apart by their TemporalPositionIndex.

An Enhanced MR file here holds what discovery reads of the standard's functional groups: spacing, orientation,
rescale and sequence timing shared; each frame's position, acquisition time and temporal position.

Decoys (:data:`EXTRAS`): "t2" (same grid, T2 sequence), "localizer" (three orthogonal slices), "seg" (a minimal
DICOM SEG of the enhancing region), "subtraction" (post1 - pre, DERIVED/SUBTRACTION, agent set, post1's time),
"secondary_capture" (an 8-bit screen save of the post1 maximum projection). Writing needs pydicom >= 3.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)

from .outputs import atomic_output_dir

EXTRAS: tuple[str, ...] = ("t2", "localizer", "seg", "subtraction", "secondary_capture")
STORED_BITS = 12
MAX_STORED = 2**STORED_BITS - 1
STUDY_START = datetime.datetime(2024, 1, 15, 9, 30, 0)


@dataclass(frozen=True)
class VendorConvention:
    """How one vendor names, numbers and times the phases of a DCE acquisition."""

    manufacturer: str
    model: str
    pre_description: str  #: format fields: ``ordinal`` ("1st", ...), ``seconds`` (time in the dynamic)
    post_description: str
    single_series: bool  #: every phase in one series, told apart by temporal position and trigger time
    temporal_positions: bool
    trigger_times: bool  #: TriggerTime (ms after the start of the dynamic scan) on every phase
    agent_on_pre: bool
    agent: str
    phase_interval_s: float
    first_phase_s: float  #: time of the first phase after the start of the dynamic scan
    repetition_ms: float
    echo_ms: float
    flip_deg: float
    field_t: float
    multi_frame: bool = False  #: each series one Enhanced MR file, its slices (of every phase it holds) as frames
    extra_descriptions: Mapping[str, str] = field(default_factory=dict)


_GE_EXTRAS = {"t2": "Ax T2 FSE", "localizer": "3-Plane Loc", "subtraction": "Ax Vibrant SUB Ph2-Ph1",
              "secondary_capture": "Screen Save", "seg": "Segmentation"}
_SIEMENS_EXTRAS = {"t2": "t2_tse_tra", "localizer": "localizer", "subtraction": "ax dyn 1st pass_SUB",
                   "secondary_capture": "MIP Screenshot", "seg": "Segmentation"}
_PHILIPS_EXTRAS = {"t2": "T2W_TSE", "localizer": "Survey", "subtraction": "Dyn_eTHRIVE_SUB",
                   "secondary_capture": "Screen capture", "seg": "Segmentation"}

CONVENTIONS: dict[str, VendorConvention] = {
    "ge_multiphase": VendorConvention(
        "GE MEDICAL SYSTEMS", "DISCOVERY MR750", "Ax Vibrant MultiPhase", "Ax Vibrant MultiPhase",
        single_series=True, temporal_positions=True, trigger_times=True, agent_on_pre=True, agent="MultiHance",
        phase_interval_s=90.0, first_phase_s=0.0, repetition_ms=4.9, echo_ms=2.4, flip_deg=10.0, field_t=3.0,
        extra_descriptions=_GE_EXTRAS),
    "siemens": VendorConvention(
        "SIEMENS", "Skyra", "ax dyn pre", "ax dyn {ordinal} pass",
        single_series=False, temporal_positions=False, trigger_times=False, agent_on_pre=False, agent="Gadovist",
        phase_interval_s=80.0, first_phase_s=0.0, repetition_ms=4.5, echo_ms=1.7, flip_deg=10.0, field_t=3.0,
        extra_descriptions=_SIEMENS_EXTRAS),
    "siemens_twist": VendorConvention(
        "SIEMENS", "Prisma", "t1_twist_tra_dyn_TT={seconds:.1f}s", "t1_twist_tra_dyn_TT={seconds:.1f}s",
        single_series=False, temporal_positions=False, trigger_times=True, agent_on_pre=True, agent="Dotarem",
        phase_interval_s=15.6, first_phase_s=7.8, repetition_ms=5.3, echo_ms=2.5, flip_deg=12.0, field_t=3.0,
        extra_descriptions=_SIEMENS_EXTRAS),
    "philips": VendorConvention(
        "Philips Medical Systems", "Ingenia", "Dyn_eTHRIVE", "Dyn_eTHRIVE",
        single_series=False, temporal_positions=True, trigger_times=False, agent_on_pre=False, agent="Gadovist",
        phase_interval_s=60.0, first_phase_s=0.0, repetition_ms=4.4, echo_ms=2.2, flip_deg=10.0, field_t=1.5,
        extra_descriptions=_PHILIPS_EXTRAS),
    "siemens_xa": VendorConvention(
        "SIEMENS", "MAGNETOM Vida", "ax dyn pre", "ax dyn {ordinal} pass",
        single_series=False, temporal_positions=False, trigger_times=False, agent_on_pre=False, agent="Gadovist",
        phase_interval_s=75.0, first_phase_s=0.0, repetition_ms=4.6, echo_ms=1.8, flip_deg=10.0, field_t=3.0,
        multi_frame=True, extra_descriptions=_SIEMENS_EXTRAS),
    "philips_enhanced": VendorConvention(
        "Philips Medical Systems", "Ingenia Elition", "Dyn_eTHRIVE", "Dyn_eTHRIVE",
        single_series=True, temporal_positions=True, trigger_times=False, agent_on_pre=False, agent="Dotarem",
        phase_interval_s=60.0, first_phase_s=0.0, repetition_ms=4.2, echo_ms=2.1, flip_deg=10.0, field_t=3.0,
        multi_frame=True, extra_descriptions=_PHILIPS_EXTRAS),
}

#: Seconds after STUDY_START at which each kind of series is acquired.
_LOCALIZER_S, _T2_S, _DCE_S = 0.0, 120.0, 600.0
_LOCALIZER_NUMBER, _T2_NUMBER, _DCE_NUMBER = 1, 3, 5
_SUBTRACTION_NUMBER, _SECONDARY_CAPTURE_NUMBER, _SEG_NUMBER = 50, 900, 1000


@dataclass(frozen=True)
class _Scale:
    """Real value = stored * slope + intercept, stored in 0..MAX_STORED."""

    slope: float
    intercept: float

    @classmethod
    def covering(cls, arrays: Sequence[np.ndarray]) -> _Scale:
        low = float(min(array.min() for array in arrays))
        high = float(max(array.max() for array in arrays))
        integral = all(np.array_equal(array, np.rint(array)) for array in arrays)
        if integral and low >= 0 and high <= MAX_STORED:
            return cls(1.0, 0.0)
        # The slope is rounded to what the DS string holds, upwards so that the highest value still fits.
        slope = float(_decimal(max(high - low, 1e-6) / MAX_STORED * (1 + 1e-7)))
        return cls(slope, float(_decimal(low)))

    def stored(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((values - self.intercept) / self.slope), 0, MAX_STORED).astype(np.uint16)


def _decimal(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    return f"{value:.8g}"


def _dicom_time(seconds_after_start: float) -> tuple[str, str]:
    moment = STUDY_START + datetime.timedelta(seconds=seconds_after_start)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


@dataclass(frozen=True)
class _Grid:
    """Slice geometry of a SimpleITK image in DICOM terms."""

    rows: int
    columns: int
    slices: int
    row_spacing: float
    column_spacing: float
    slice_spacing: float
    orientation: tuple[float, ...]  #: ImageOrientationPatient: row direction, then column direction
    normal: np.ndarray
    origin: np.ndarray

    @classmethod
    def of(cls, image: sitk.Image) -> _Grid:
        direction = np.array(image.GetDirection()).reshape(3, 3)
        columns, rows, slices = image.GetSize()
        spacing_x, spacing_y, spacing_z = image.GetSpacing()
        return cls(rows, columns, slices, spacing_y, spacing_x, spacing_z,
                   tuple(direction[:, 0]) + tuple(direction[:, 1]), direction[:, 2], np.array(image.GetOrigin()))

    def position(self, index: int) -> np.ndarray:
        return self.origin + index * self.slice_spacing * self.normal

    def same_as(self, other: _Grid) -> bool:
        return (self.rows, self.columns, self.slices) == (other.rows, other.columns, other.slices) and np.allclose(
            np.r_[self.row_spacing, self.column_spacing, self.slice_spacing, self.orientation, self.origin],
            np.r_[other.row_spacing, other.column_spacing, other.slice_spacing, other.orientation, other.origin])


def _check_volume(image: sitk.Image, what: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what} must be a 3-D scalar image, got {image.GetDimension()}-D "
                         f"with {image.GetNumberOfComponentsPerPixel()} components")


class _StudyWriter:
    """Writes the series of one study into a folder, one sub-folder per series."""

    def __init__(self, folder: Path, convention_name: str, patient_id: str, seed: int):
        self.folder = folder
        self.convention = CONVENTIONS[convention_name]
        self.uid_sources = [str(seed), patient_id, convention_name]
        self.study = self._study_tags(patient_id)

    def uid(self, *parts: object) -> str:
        """A UID that is the same for the same seed, patient, convention and parts (reproducible studies)."""
        return generate_uid(entropy_srcs=[*self.uid_sources, *map(str, parts)])

    def _study_tags(self, patient_id: str) -> Dataset:
        study = Dataset()
        study.SpecificCharacterSet = "ISO_IR 100"
        study.PatientName = f"Phantom^{patient_id}"
        study.PatientID = patient_id
        study.PatientBirthDate = "19700101"
        study.PatientSex = "F"
        study.StudyInstanceUID = self.uid("study")
        study.StudyDate, study.StudyTime = _dicom_time(0.0)
        study.StudyID = "1"
        study.AccessionNumber = f"ACC{patient_id}"[:16]
        study.ReferringPhysicianName = ""
        study.StudyDescription = "MR BREAST BILATERAL W/WO CONTRAST"
        study.FrameOfReferenceUID = self.uid("frame of reference")
        study.PositionReferenceIndicator = ""
        study.Manufacturer = self.convention.manufacturer
        study.ManufacturerModelName = self.convention.model
        study.InstitutionName = "BreastSegmentation phantom"
        study.BodyPartExamined = "BREAST"
        study.PatientPosition = "HFP"
        return study

    def series_tags(self, key: str, number: int, description: str, seconds: float, image_type: str,
                    sop_class: str = MRImageStorage, modality: str = "MR") -> Dataset:
        series = Dataset()
        series.update(self.study)
        series.SOPClassUID = sop_class
        series.Modality = modality
        series.SeriesInstanceUID = self.uid("series", key)
        series.SeriesNumber = number
        series.SeriesDescription = description
        series.ProtocolName = description
        series.SeriesDate, series.SeriesTime = _dicom_time(seconds)
        series.AcquisitionDate, series.AcquisitionTime = _dicom_time(seconds)
        series.ContentDate, series.ContentTime = _dicom_time(seconds + 5.0)
        series.ImageType = image_type.split("\\")
        return series

    def mr_sequence_tags(self, series: Dataset, repetition_ms: float, echo_ms: float, flip_deg: float,
                         scanning_sequence: str) -> None:
        series.ScanningSequence = scanning_sequence
        series.SequenceVariant = "SP\\SK".split("\\")
        series.ScanOptions = ""
        series.MRAcquisitionType = "3D" if scanning_sequence == "GR" else "2D"
        series.RepetitionTime = _decimal(repetition_ms)
        series.EchoTime = _decimal(echo_ms)
        series.FlipAngle = _decimal(flip_deg)
        series.MagneticFieldStrength = _decimal(self.convention.field_t)
        series.ImagingFrequency = _decimal(42.577 * self.convention.field_t)

    def write_volume(self, series: Dataset, image: sitk.Image, scale: _Scale, first_instance: int = 1) -> None:
        """One classic MR file per slice of ``image`` (slice-level tags on top of ``series``)."""
        grid = _Grid.of(image)
        stored = scale.stored(sitk.GetArrayFromImage(image).astype(np.float64))
        for index in range(grid.slices):
            instance = first_instance + index
            dataset = _copy(series)
            dataset.SOPInstanceUID = self.uid("instance", series.SeriesInstanceUID, instance)
            dataset.InstanceNumber = instance
            position = grid.position(index)
            dataset.ImagePositionPatient = [_decimal(value) for value in position]
            dataset.ImageOrientationPatient = [_decimal(value) for value in grid.orientation]
            dataset.SliceLocation = _decimal(float(position @ grid.normal))
            dataset.PixelSpacing = [_decimal(grid.row_spacing), _decimal(grid.column_spacing)]
            dataset.SliceThickness = _decimal(grid.slice_spacing)
            dataset.SpacingBetweenSlices = _decimal(grid.slice_spacing)
            _set_pixels(dataset, stored[index], scale)
            self.save(dataset, series)

    def write_frames(self, phases: Sequence[tuple[Dataset, sitk.Image]], scale: _Scale) -> None:
        """One Enhanced MR file holding the slices of ``phases`` (their series tags and image, one grid) as frames,
        phase after phase: the first phase's series tags, the agent of any phase, and the classic per-slice tags
        moved into functional groups."""
        first, image = phases[0]
        grid = _Grid.of(image)
        dataset = _copy(first)
        dataset.SOPClassUID = EnhancedMRImageStorage
        dataset.SOPInstanceUID = self.uid("instance", first.SeriesInstanceUID, 1)
        dataset.InstanceNumber = 1
        agents = [series.ContrastBolusAgent for series, _ in phases if "ContrastBolusAgent" in series]
        if agents:
            dataset.ContrastBolusAgent = agents[0]
        for keyword in ("AcquisitionDate", "AcquisitionTime", "TriggerTime", "TemporalPositionIdentifier",
                        "RepetitionTime", "EchoTime", "FlipAngle"):
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.AcquisitionDateTime = first.AcquisitionDate + first.AcquisitionTime
        shared = _shared_geometry(grid)
        transform, timing, echo = Dataset(), Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = _decimal(scale.slope), _decimal(scale.intercept)
        transform.RescaleType = "US"
        timing.RepetitionTime, timing.FlipAngle = first.RepetitionTime, first.FlipAngle
        echo.EffectiveEchoTime = first.EchoTime
        shared.PixelValueTransformationSequence = DicomSequence([transform])
        shared.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
        shared.MREchoSequence = DicomSequence([echo])
        dataset.SharedFunctionalGroupsSequence = DicomSequence([shared])
        dataset.PerFrameFunctionalGroupsSequence = DicomSequence(
            [_mr_frame(series, grid.position(index), index) for series, _ in phases for index in range(grid.slices)])
        stored = np.concatenate([scale.stored(sitk.GetArrayFromImage(image).astype(np.float64))
                                 for _, image in phases])
        dataset.NumberOfFrames = len(stored)
        _set_pixel_data(dataset, stored)
        self.save(dataset, first)

    def save(self, dataset: Dataset, series: Dataset) -> None:
        folder = self.folder / f"{int(series.SeriesNumber):04d}_{_slug(series.SeriesDescription)}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = meta
        pydicom.dcmwrite(folder / f"IM{int(dataset.InstanceNumber):05d}.dcm", dataset, enforce_file_format=True)


def _copy(dataset: Dataset) -> Dataset:
    copied = Dataset()
    copied.update(dataset)
    return copied


def _set_pixel_data(dataset: Dataset, stored: np.ndarray) -> None:
    """The image pixel module of 12-bit values: one slice (rows, columns), or frames (frames, rows, columns)."""
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = stored.shape[-2:]
    dataset.BitsAllocated = 16
    dataset.BitsStored = STORED_BITS
    dataset.HighBit = STORED_BITS - 1
    dataset.PixelRepresentation = 0
    dataset.add_new(0x7FE00010, "OW", np.ascontiguousarray(stored, dtype="<u2").tobytes())


def _set_pixels(dataset: Dataset, stored: np.ndarray, scale: _Scale) -> None:
    """One classic slice's pixels, rescale and display window."""
    _set_pixel_data(dataset, stored)
    dataset.RescaleSlope = _decimal(scale.slope)
    dataset.RescaleIntercept = _decimal(scale.intercept)
    dataset.RescaleType = "US"
    dataset.WindowCenter = _decimal(scale.intercept + scale.slope * MAX_STORED / 2)
    dataset.WindowWidth = _decimal(scale.slope * MAX_STORED)


def _shared_geometry(grid: _Grid) -> Dataset:
    """The functional groups every frame of a multi-frame object on ``grid`` shares: pixel measures, orientation."""
    measures, orientation, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [_decimal(grid.row_spacing), _decimal(grid.column_spacing)]
    measures.SliceThickness = _decimal(grid.slice_spacing)
    measures.SpacingBetweenSlices = _decimal(grid.slice_spacing)
    orientation.ImageOrientationPatient = [_decimal(value) for value in grid.orientation]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    return shared


def _mr_frame(series: Dataset, position: np.ndarray, in_stack: int) -> Dataset:
    """One Enhanced MR frame's own functional groups: its position, and its phase's time and temporal position."""
    plane, content, frame = Dataset(), Dataset(), Dataset()
    plane.ImagePositionPatient = [_decimal(value) for value in position]
    content.FrameAcquisitionDateTime = series.AcquisitionDate + series.AcquisitionTime
    content.StackID = "1"
    content.InStackPositionNumber = in_stack + 1
    if "TemporalPositionIdentifier" in series:
        content.TemporalPositionIndex = series.TemporalPositionIdentifier
    frame.PlanePositionSequence = DicomSequence([plane])
    frame.FrameContentSequence = DicomSequence([content])
    return frame


def _write_dce(writer: _StudyWriter, phases: Sequence[sitk.Image], scale: _Scale) -> list[Dataset]:
    """Write the DCE phases in the convention's layout; return the series tags of each phase."""
    convention = writer.convention
    tags = []
    for index, image in enumerate(phases):
        seconds = convention.first_phase_s + index * convention.phase_interval_s
        template = convention.pre_description if index == 0 else convention.post_description
        description = template.format(ordinal=_ordinal(index), seconds=seconds)
        key = "dce" if convention.single_series else f"dce phase {index}"
        number = _DCE_NUMBER if convention.single_series else _DCE_NUMBER + index
        series_start = _DCE_S if convention.single_series else _DCE_S + seconds
        series = writer.series_tags(key, number, description, series_start, "ORIGINAL\\PRIMARY\\M\\ND")
        writer.mr_sequence_tags(series, convention.repetition_ms, convention.echo_ms, convention.flip_deg, "GR")
        series.AcquisitionDate, series.AcquisitionTime = _dicom_time(_DCE_S + seconds)
        series.ContentDate, series.ContentTime = _dicom_time(_DCE_S + seconds + 5.0)
        if index > 0 or convention.agent_on_pre:
            series.ContrastBolusAgent = convention.agent
        if convention.trigger_times:
            series.TriggerTime = _decimal(1000.0 * seconds)
        if convention.temporal_positions:
            series.TemporalPositionIdentifier = index + 1
            series.NumberOfTemporalPositions = len(phases)
        first_instance = 1 + index * image.GetSize()[2] if convention.single_series else 1
        if not convention.multi_frame:
            writer.write_volume(series, image, scale, first_instance)
        tags.append(series)
    if convention.multi_frame:
        files = [range(len(phases))] if convention.single_series else [[index] for index in range(len(phases))]
        for members in files:
            writer.write_frames([(tags[index], phases[index]) for index in members], scale)
    return tags


def _write_t2(writer: _StudyWriter, pre: sitk.Image) -> None:
    """Same grid as the pre-contrast phase (so geometry alone cannot tell it apart), inverted contrast."""
    values = sitk.GetArrayFromImage(pre).astype(np.float64)
    inverted = sitk.GetImageFromArray(values.max() + values.min() - values)
    inverted.CopyInformation(pre)
    series = writer.series_tags("t2", _T2_NUMBER, writer.convention.extra_descriptions["t2"], _T2_S,
                                "ORIGINAL\\PRIMARY\\M\\ND")
    writer.mr_sequence_tags(series, 4000.0, 90.0, 90.0, "SE")
    writer.write_volume(series, inverted, _Scale.covering([values]))


def _write_localizer(writer: _StudyWriter, pre: sitk.Image) -> None:
    """Three orthogonal slices through the centre of the pre-contrast volume, in one series."""
    grid = _Grid.of(pre)
    middle = sitk.GetArrayFromImage(pre)[grid.slices // 2].astype(np.float64)
    scale = _Scale.covering([middle])
    centre = np.array(pre.TransformContinuousIndexToPhysicalPoint([(size - 1) / 2 for size in pre.GetSize()]))
    series = writer.series_tags("localizer", _LOCALIZER_NUMBER, writer.convention.extra_descriptions["localizer"],
                                _LOCALIZER_S, "ORIGINAL\\PRIMARY\\LOCALIZER")
    writer.mr_sequence_tags(series, 8.6, 4.0, 20.0, "GR")
    planes = {"axial": ((1, 0, 0), (0, 1, 0)), "sagittal": ((0, 1, 0), (0, 0, -1)), "coronal": ((1, 0, 0), (0, 0, -1))}
    for instance, (row_direction, column_direction) in enumerate(planes.values(), start=1):
        row_direction, column_direction = np.array(row_direction, float), np.array(column_direction, float)
        corner = (centre - row_direction * grid.column_spacing * (grid.columns - 1) / 2
                  - column_direction * grid.row_spacing * (grid.rows - 1) / 2)
        dataset = _copy(series)
        dataset.SOPInstanceUID = writer.uid("instance", series.SeriesInstanceUID, instance)
        dataset.InstanceNumber = instance
        dataset.ImagePositionPatient = [_decimal(value) for value in corner]
        dataset.ImageOrientationPatient = [_decimal(value) for value in (*row_direction, *column_direction)]
        dataset.PixelSpacing = [_decimal(grid.row_spacing), _decimal(grid.column_spacing)]
        dataset.SliceThickness = _decimal(grid.slice_spacing)
        _set_pixels(dataset, scale.stored(middle), scale)
        writer.save(dataset, series)


def _subtraction_values(phases: Sequence[sitk.Image]) -> sitk.Image:
    return sitk.Cast(phases[1], sitk.sitkFloat64) - sitk.Cast(phases[0], sitk.sitkFloat64)


def _write_subtraction(writer: _StudyWriter, phases: Sequence[sitk.Image], post1: Dataset) -> None:
    """post1 - pre, derived, with the agent and post1's acquisition time: only its type and name tell it apart."""
    difference = _subtraction_values(phases)
    series = writer.series_tags("subtraction", _SUBTRACTION_NUMBER, writer.convention.extra_descriptions["subtraction"],
                                _DCE_S, "DERIVED\\PRIMARY\\SUBTRACTION")
    writer.mr_sequence_tags(series, writer.convention.repetition_ms, writer.convention.echo_ms,
                            writer.convention.flip_deg, "GR")
    for keyword in ("AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime", "ContrastBolusAgent"):
        if keyword in post1:
            setattr(series, keyword, post1.data_element(keyword).value)
    writer.write_volume(series, difference, _Scale.covering([sitk.GetArrayFromImage(difference)]))


def _write_secondary_capture(writer: _StudyWriter, phases: Sequence[sitk.Image]) -> None:
    """An 8-bit screen save (maximum projection of the last phase) without any patient geometry."""
    projection = sitk.GetArrayFromImage(phases[-1]).astype(np.float64).max(axis=0)
    span = max(float(projection.max() - projection.min()), 1e-6)
    pixels = np.rint(255 * (projection - projection.min()) / span).astype(np.uint8)
    series = writer.series_tags("secondary capture", _SECONDARY_CAPTURE_NUMBER,
                                writer.convention.extra_descriptions["secondary_capture"], _DCE_S + 3600.0,
                                "DERIVED\\SECONDARY", sop_class=SecondaryCaptureImageStorage)
    dataset = _copy(series)
    dataset.SOPInstanceUID = writer.uid("instance", series.SeriesInstanceUID, 1)
    dataset.InstanceNumber = 1
    dataset.ConversionType = "WSD"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.add_new(0x7FE00010, "OB", pixels.tobytes())
    writer.save(dataset, series)


def _write_seg(writer: _StudyWriter, phases: Sequence[sitk.Image], pre: Dataset) -> None:
    """A minimal binary DICOM SEG (one segment, one frame per slice) of where post1 - pre enhances most."""
    difference = sitk.GetArrayFromImage(_subtraction_values(phases))
    mask = (difference > difference.max() / 2).astype(np.uint8)
    grid = _Grid.of(phases[0])
    series = writer.series_tags("seg", _SEG_NUMBER, writer.convention.extra_descriptions["seg"], _DCE_S + 7200.0,
                                "DERIVED\\PRIMARY", sop_class=SegmentationStorage, modality="SEG")
    dataset = _copy(series)
    dataset.SOPInstanceUID = writer.uid("instance", series.SeriesInstanceUID, 1)
    dataset.InstanceNumber = 1
    dataset.SegmentationType = "BINARY"
    dataset.ContentLabel = "LESION"
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "enhancing region"
    segment.SegmentAlgorithmType = "MANUAL"
    dataset.SegmentSequence = DicomSequence([segment])
    referenced = Dataset()
    referenced.SeriesInstanceUID = pre.SeriesInstanceUID
    dataset.ReferencedSeriesSequence = DicomSequence([referenced])
    dataset.SharedFunctionalGroupsSequence = DicomSequence([_shared_geometry(grid)])
    dataset.PerFrameFunctionalGroupsSequence = DicomSequence(
        [_seg_frame(grid.position(index)) for index in range(grid.slices)])
    dataset.NumberOfFrames = grid.slices
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = grid.rows, grid.columns
    dataset.BitsAllocated = dataset.BitsStored = 1
    dataset.HighBit = 0
    dataset.PixelRepresentation = 0
    dataset.LossyImageCompression = "00"
    dataset.add_new(0x7FE00010, "OB", np.packbits(mask.ravel(), bitorder="little").tobytes())
    writer.save(dataset, series)


def _seg_frame(position: np.ndarray) -> Dataset:
    plane, identification, frame = Dataset(), Dataset(), Dataset()
    plane.ImagePositionPatient = [_decimal(value) for value in position]
    identification.ReferencedSegmentNumber = 1
    frame.PlanePositionSequence = DicomSequence([plane])
    frame.SegmentIdentificationSequence = DicomSequence([identification])
    return frame


def write_dce_study(out_dir: str | os.PathLike, phases: Sequence[sitk.Image], convention: str = "siemens", *,
                    patient_id: str = "PHANTOM001", seed: int = 0, extras: Sequence[str] = ()) -> Path:
    """Write ``phases`` (pre-contrast first, then the posts in order) as a DICOM study in ``out_dir``.

    ``convention`` is a key of :data:`CONVENTIONS`; ``extras`` names decoy series from :data:`EXTRAS`. The
    same arguments give the same files (UIDs derive from ``seed``, ``patient_id`` and ``convention``). The study
    appears in ``out_dir`` whole or not at all. Returns ``out_dir``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise ValueError(f"unknown extras {unknown}; choose from {', '.join(EXTRAS)}")
    if not phases:
        raise ValueError("at least one phase (the pre-contrast image) is needed")
    if len(phases) < 2 and {"subtraction", "seg"} & set(extras):
        raise ValueError("the 'subtraction' and 'seg' extras need a post-contrast phase")
    for index, image in enumerate(phases):
        _check_volume(image, f"phase {index}")
    if CONVENTIONS[convention].single_series and not all(_Grid.of(image).same_as(_Grid.of(phases[0]))
                                                         for image in phases):
        raise ValueError(f"convention {convention!r} keeps all phases in one series: they need one grid")
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as staging:
        writer = _StudyWriter(staging, convention, patient_id, seed)
        scale = _Scale.covering([sitk.GetArrayFromImage(image).astype(np.float64) for image in phases])
        dce = _write_dce(writer, phases, scale)
        if "t2" in extras:
            _write_t2(writer, phases[0])
        if "localizer" in extras:
            _write_localizer(writer, phases[0])
        if "subtraction" in extras:
            _write_subtraction(writer, phases, dce[1])
        if "secondary_capture" in extras:
            _write_secondary_capture(writer, phases)
        if "seg" in extras:
            _write_seg(writer, phases, dce[0])
    return out_dir
