"""DICOM study discovery, the synthetic study writer and ``breastseg inspect`` on tiny vendor-like studies."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.inference.study import study_from_dicom
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.io.dicom import NO_POST, NO_PRE, StudyDiscovery, discover_study, read_phase
from BreastSegmentationLib.io.dicom_write import CONVENTIONS, EXTRAS, write_dce_study
from BreastSegmentationLib.io.images import read_volume

CONVENTION_NAMES = tuple(CONVENTIONS)


@pytest.fixture(scope="module")
def phases() -> list[sitk.Image]:
    """Pre-contrast and three posts, 16x16x6, oblique; the posts enhance a block by different amounts."""
    rng = np.random.default_rng(7)
    base = rng.normal(100.0, 10.0, size=(6, 16, 16))
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]])
    images = []
    for enhancement in (0.0, 300.0, 250.0, 200.0):
        values = base.copy()
        values[2:5, 4:10, 6:12] += enhancement
        image = sitk.GetImageFromArray(values.astype(np.float32))
        image.SetSpacing((0.7, 0.8, 2.5))
        image.SetOrigin((-20.0, 35.5, -7.25))
        image.SetDirection(tuple(rotation.ravel()))
        images.append(image)
    return images


def _matches(image: sitk.Image, expected: sitk.Image, tolerance: float) -> bool:
    difference = sitk.GetArrayFromImage(image).astype(np.float64) - sitk.GetArrayFromImage(expected)
    return bool(np.abs(difference).max() <= tolerance)


def _slope(series_files: tuple[Path, ...]) -> float:
    """The rescale slope a series was written with: classic, or shared by an enhanced file's frames."""
    dataset = pydicom.dcmread(series_files[0], stop_before_pixels=True)
    if "SharedFunctionalGroupsSequence" in dataset:
        return float(dataset.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope)
    return float(dataset.RescaleSlope)


def _which_phase(discovered, phases: list[sitk.Image]) -> int:
    """Index of the written phase whose values ``discovered`` reads back as."""
    image = read_phase(discovered)
    tolerance = _slope(discovered.files) / 2 + 1e-3
    found = [index for index, phase in enumerate(phases) if _matches(image, phase, tolerance)]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("convention", CONVENTION_NAMES)
def test_each_convention_gives_pre_first_post_and_phase_order(tmp_path, phases, convention):
    study = write_dce_study(tmp_path / "study", phases, convention)
    found = discover_study(study)
    assert found.missing == []
    assert found.pre is not None and found.pre.classification == "pre-contrast"
    assert found.pre.reasons and any("+" in reason for reason in found.pre.reasons)
    assert [_which_phase(phase, phases) for phase in (found.pre, *found.posts)] == [0, 1, 2, 3]
    assert found.first_post is found.posts[0] and found.first_post.n_slices == 6
    if CONVENTIONS[convention].single_series:
        assert {phase.series_uid for phase in (found.pre, *found.posts)} == {found.pre.series_uid}
        assert found.pre.uid == f"{found.pre.series_uid}#phase1"
        assert found.first_post.uid == f"{found.pre.series_uid}#phase2"
    else:
        assert len({phase.series_uid for phase in (found.pre, *found.posts)}) == 4


def test_contrast_agent_on_every_phase_is_not_evidence(tmp_path, phases):
    found = discover_study(write_dce_study(tmp_path / "twist", phases, "siemens_twist"))
    assert any("every phase: no evidence" in reason for reason in found.pre.reasons)
    assert found.pre.description == "t1_twist_tra_dyn_TT=7.8s"
    assert found.first_post.description == "t1_twist_tra_dyn_TT=23.4s"


@pytest.mark.parametrize("convention", CONVENTION_NAMES)
def test_decoy_series_are_classified(tmp_path, phases, convention):
    found = discover_study(write_dce_study(tmp_path / "study", phases[:2], convention, extras=EXTRAS))
    assert found.missing == [] and found.warnings == []
    assert _which_phase(found.pre, phases) == 0 and _which_phase(found.first_post, phases) == 1
    assert len(found.posts) == 1
    assert [phase.classification for phase in found.subtraction] == ["subtraction"]
    assert sorted(phase.classification for phase in found.others) == [
        "T2-weighted", "localizer", "secondary capture", "segmentation"]
    assert all(phase.reasons for phase in found.others)


def _write_reformats(phases: list[sitk.Image], folder: Path, into: Path | None = None) -> Path:
    """Sagittal reformats of ``phases`` (ImageType DERIVED/SECONDARY/MPR) as a study in ``folder``, or as series of
    the study ``into`` numbered before its acquired ones (without a preference the first cluster found would win);
    returns the folder that holds them."""
    write_dce_study(folder, [sitk.DICOMOrient(phase, "PSL") for phase in phases], "siemens", seed=1)
    acquired = None if into is None else pydicom.dcmread(next(into.rglob("*.dcm")), stop_before_pixels=True)
    target = folder if into is None else into / "reformats"
    target.mkdir(exist_ok=True)
    for path in sorted(folder.rglob("*.dcm")):
        dataset = pydicom.dcmread(path)
        if acquired is not None:
            dataset.StudyInstanceUID, dataset.PatientID = acquired.StudyInstanceUID, acquired.PatientID
        dataset.ImageType = ["DERIVED", "SECONDARY", "MPR"]
        dataset.SeriesNumber = int(dataset.SeriesNumber) - 4
        dataset.save_as(path if into is None else target / f"{dataset.SeriesNumber:04d}_{path.name}")
    return target


def test_acquired_dce_phases_are_chosen_over_their_reformats(tmp_path, phases):
    study = write_dce_study(tmp_path / "study", phases[:2], "siemens")
    reformats = _write_reformats(phases[:2], tmp_path / "reformatted", into=study)
    found = discover_study(study)
    assert not any(reformats in path.parents for path in found.pre.files + found.first_post.files)
    assert _which_phase(found.pre, phases) == 0 and _which_phase(found.first_post, phases) == 1
    assert not any("reformatted" in warning for warning in found.warnings)


def test_reformatted_dce_phases_alone_are_used_with_a_warning(tmp_path, phases):
    folder = _write_reformats(phases[:2], tmp_path / "reformatted")
    found = discover_study(folder)
    assert found.pre is not None and found.first_post is not None
    assert found.pre.image_type == ("DERIVED", "SECONDARY", "MPR")
    assert any("reformatted series" in warning for warning in found.warnings)
    # the warning stays with the study read for segmenting (summary.json's inputs)
    assert study_from_dicom(folder).sources["warnings"] == found.warnings


def _delete_pre_contrast_files(study: Path, convention: str) -> None:
    """Remove what the writer wrote for the first phase (its series, or its files in the multi-phase series)."""
    dce_folder = next(study.glob("0005_*"))
    if CONVENTIONS[convention].single_series:
        for path in sorted(dce_folder.glob("*.dcm"))[:6]:
            path.unlink()
    else:
        shutil.rmtree(dce_folder)


@pytest.mark.parametrize("convention", ["siemens", "philips", "ge_multiphase"])
def test_missing_pre_contrast_is_reported(tmp_path, phases, convention, capsys):
    study = write_dce_study(tmp_path / "study", phases, convention)
    _delete_pre_contrast_files(study, convention)
    found = discover_study(study)
    assert found.pre is None and found.missing == [NO_PRE]
    assert [_which_phase(phase, phases) for phase in found.posts] == [1, 2, 3]
    assert main(["--progress", "none", "inspect", "--dicom", str(study)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == ["no pre-contrast phase found"] and report["pre_contrast"] is None
    assert report["first_post_contrast"]["id"] == found.first_post.uid


@pytest.mark.parametrize("convention", ["siemens", "philips"])
def test_missing_post_contrast_is_reported(tmp_path, phases, convention):
    found = discover_study(write_dce_study(tmp_path / "study", phases[:1], convention))
    assert found.missing == [NO_POST] and found.posts == []
    assert _which_phase(found.pre, phases) == 0


def test_nested_folders_truncated_and_foreign_files_are_handled(tmp_path, phases, caplog):
    study = write_dce_study(tmp_path / "study", phases[:3], "siemens")
    nested = study / "a" / "b"
    nested.mkdir(parents=True)
    shutil.move(str(next(study.glob("0005_*"))), nested)
    (study / "notes.txt").write_text("not an image\n")
    (nested / "DICOMDIR").write_bytes(b"\0" * 200)
    second_pass = sorted(next(study.glob("0007_*")).glob("*.dcm"))
    cut_in_pixels, cut_in_header = second_pass[2], second_pass[3]
    cut_in_pixels.write_bytes(cut_in_pixels.read_bytes()[:-40])
    cut_in_header.write_bytes(cut_in_header.read_bytes()[:400])
    with caplog.at_level(logging.WARNING, logger="BreastSegmentationLib.io.dicom"):
        found = discover_study(study)
    logged = caplog.text
    assert f"{cut_in_pixels}: truncated DICOM file" in logged
    assert f"{cut_in_header}: truncated DICOM file" in logged
    assert "notes.txt" in logged and "DICOMDIR" not in logged
    assert any("notes.txt" in warning for warning in found.warnings)
    assert _which_phase(found.pre, phases) == 0 and found.pre.to_dict(study)["folder"].startswith("a/b/")
    assert [_which_phase(phase, phases) for phase in found.posts] == [1]
    incomplete = [phase for phase in found.others if phase.description == "ax dyn 2nd pass"]
    assert len(incomplete) == 1 and incomplete[0].n_slices == 4 and incomplete[0].classification == "other MR"


def _strip_temporal_positions(study: Path) -> None:
    """Make the GE multi-phase series tell its phases apart by TriggerTime / AcquisitionTime only."""
    for path in study.rglob("*.dcm"):
        dataset = pydicom.dcmread(path)
        del dataset.TemporalPositionIdentifier, dataset.NumberOfTemporalPositions
        dataset.save_as(path)


def test_multiphase_series_without_temporal_positions_splits_by_trigger_time(tmp_path, phases):
    study = write_dce_study(tmp_path / "study", phases, "ge_multiphase")
    _strip_temporal_positions(study)
    found = discover_study(study)
    assert [_which_phase(phase, phases) for phase in (found.pre, *found.posts)] == [0, 1, 2, 3]
    assert any("split by TriggerTime" in reason for reason in found.pre.reasons)


def test_multiphase_series_with_a_truncated_slice_keeps_its_complete_phases(tmp_path, phases, caplog):
    study = write_dce_study(tmp_path / "study", phases, "ge_multiphase")
    _strip_temporal_positions(study)
    cut = sorted(study.rglob("*.dcm"))[20]
    cut.write_bytes(cut.read_bytes()[:-100])
    found = discover_study(study)
    assert f"{cut}: truncated DICOM file" in caplog.text
    assert [_which_phase(phase, phases) for phase in (found.pre, *found.posts)] == [0, 1, 2]
    assert [(phase.classification, phase.n_slices) for phase in found.others] == [("other MR", 5)]


@pytest.mark.parametrize("convention", ["ge_multiphase", "philips_enhanced", "siemens_xa"])
def test_read_phase_returns_written_geometry_and_values(tmp_path, phases, convention):
    found = discover_study(write_dce_study(tmp_path / "study", phases, convention))
    image = read_phase(found.posts[1])
    expected = phases[2]
    assert image.GetDimension() == 3 and image.GetSize() == expected.GetSize()
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
    assert _matches(image, expected, _slope(found.posts[1].files) / 2 + 1e-3)
    assert not _matches(image, phases[1], 10.0)


def _shuffle_frames_with_own_rescale(path: Path, seed: int) -> None:
    """Rewrite an enhanced file with its frames in random order, each frame's stored values shifted down to 0 and
    its own intercept raised to match: the same real values, found only by following each frame's groups."""
    dataset = pydicom.dcmread(path)
    stored = dataset.pixel_array.astype(np.int64)
    shared = dataset.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    slope, intercept = float(shared.RescaleSlope), float(shared.RescaleIntercept)
    order = np.random.default_rng(seed).permutation(len(stored))
    frames = [dataset.PerFrameFunctionalGroupsSequence[index] for index in order]
    shifted = []
    for frame, values in zip(frames, stored[order]):
        transform = pydicom.Dataset()
        transform.RescaleSlope = f"{slope:.8g}"
        transform.RescaleIntercept = f"{intercept + slope * values.min():.10g}"
        frame.PixelValueTransformationSequence = pydicom.Sequence([transform])
        shifted.append(values - values.min())
    dataset.PerFrameFunctionalGroupsSequence = pydicom.Sequence(frames)
    dataset.PixelData = np.asarray(shifted, dtype="<u2").tobytes()
    dataset.save_as(path)


def test_enhanced_frames_in_any_order_with_their_own_rescale_read_as_written(tmp_path, phases):
    study = write_dce_study(tmp_path / "study", phases, "philips_enhanced")
    (path,) = study.rglob("*.dcm")
    _shuffle_frames_with_own_rescale(path, seed=3)
    found = discover_study(study)
    assert [phase.uid.rsplit("#", 1)[1] for phase in (found.pre, *found.posts)] == ["phase1", "phase2", "phase3",
                                                                                    "phase4"]
    assert "phase 1 of 4 in one series, split by TemporalPositionIndex" in found.pre.reasons
    assert "TemporalPositionIndex 1 (+1)" in found.pre.reasons
    for phase, expected in zip((found.pre, *found.posts), phases):
        image = read_phase(phase)
        np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
        assert _matches(image, expected, _slope(phase.files) / 2 + 1e-3)


def test_a_folder_of_one_enhanced_file_reads_as_one_volume_unless_it_holds_several_phases(tmp_path, phases):
    one_per_phase = write_dce_study(tmp_path / "xa", phases[:2], "siemens_xa")
    pre_folder = next(one_per_phase.glob("0005_*"))
    image = read_volume(pre_folder)
    np.testing.assert_allclose(image.GetSpacing(), phases[0].GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), phases[0].GetOrigin(), atol=1e-5)
    assert _matches(image, phases[0], _slope(tuple(pre_folder.glob("*.dcm"))) / 2 + 1e-3)
    every_phase = write_dce_study(tmp_path / "philips", phases, "philips_enhanced")
    with pytest.raises(InputError, match="one multi-frame file holds 4 phases.*segment --dicom"):
        read_volume(next(every_phase.glob("0005_*")))


def test_enhanced_file_cut_after_discovery_is_an_input_error_naming_it(tmp_path, phases):
    study = write_dce_study(tmp_path / "study", phases[:2], "siemens_xa")
    found = discover_study(study)
    (path,) = found.first_post.files[:1]
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(InputError, match="cannot read series 6") as raised:
        read_phase(found.first_post)
    assert str(path) in str(raised.value)


def test_enhanced_file_whose_pixels_cannot_be_decoded_is_a_one_line_input_error(tmp_path, phases):
    """Compressed frames pydicom has no decoder for here (or cannot decode): the error names the series and the
    file on one line, as ``breastseg`` prints it."""
    study = write_dce_study(tmp_path / "study", phases[:2], "siemens_xa")
    for path in study.rglob("*.dcm"):
        dataset = pydicom.dcmread(path)
        dataset.PixelData = encapsulate([b"\xff\xd8 no JPEG data \xff\xd9"] * int(dataset.NumberOfFrames))
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        dataset.save_as(path, enforce_file_format=True)
    found = discover_study(study)
    with pytest.raises(InputError, match="cannot read series 5 'ax dyn pre'") as raised:
        read_phase(found.pre)
    assert "\n" not in str(raised.value) and str(found.pre.files[0]) in str(raised.value)


def test_enhanced_file_with_groups_for_fewer_frames_is_ignored_with_a_warning(tmp_path, phases, caplog):
    study = write_dce_study(tmp_path / "study", phases[:2], "siemens_xa")
    path = next(next(study.glob("0006_*")).glob("*.dcm"))
    dataset = pydicom.dcmread(path)
    del dataset.PerFrameFunctionalGroupsSequence[-1]
    dataset.save_as(path)
    found = discover_study(study)
    assert f"{path}: per-frame functional groups for 5 of 6 frames: ignored" in caplog.text
    assert found.missing == [NO_POST]


def test_writer_is_reproducible(tmp_path, phases):
    first = write_dce_study(tmp_path / "one", phases[:2], "philips", seed=3)
    second = write_dce_study(tmp_path / "two", phases[:2], "philips", seed=3)
    names = sorted(path.relative_to(first) for path in first.rglob("*.dcm"))
    assert names == sorted(path.relative_to(second) for path in second.rglob("*.dcm"))
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in names)


def test_inspect_prints_json_and_writes_out(tmp_path, phases, capsys):
    study = write_dce_study(tmp_path / "study", phases[:2], "siemens", extras=("t2",))
    out = tmp_path / "reports" / "inspect.json"
    assert main(["--progress", "none", "inspect", "--dicom", str(study), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["pre_contrast"]["series_description"] == "ax dyn pre"
    assert printed["pre_contrast"]["n_slices"] == 6 and printed["pre_contrast"]["reasons"]
    assert printed["first_post_contrast"]["series_description"] == "ax dyn 1st pass"
    assert [series["class"] for series in printed["others"]] == ["T2-weighted"]
    assert printed["missing"] == []


@pytest.mark.parametrize("make_folder", ["no_dicom", "absent"])
def test_inspect_without_dicom_exits_2_and_writes_nothing(tmp_path, capsys, make_folder):
    folder = tmp_path / "study"
    if make_folder == "no_dicom":
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "readme.txt").write_text("no images here\n")
        (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    reports = tmp_path / "reports"
    reports.mkdir()
    code = main(["--progress", "none", "inspect", "--dicom", str(folder), "--out", str(reports / "inspect.json")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == "" and list(reports.iterdir()) == []
    assert captured.err.count("\n") == 1 and str(folder) in captured.err
    with pytest.raises(InputError):
        discover_study(folder)


def test_discovery_dict_is_json_serialisable(tmp_path, phases):
    found = discover_study(write_dce_study(tmp_path / "study", phases[:2], "ge_multiphase", extras=("localizer",)))
    assert isinstance(found, StudyDiscovery)
    assert json.loads(json.dumps(found.to_dict()))["others"][0]["class"] == "localizer"
    with pytest.raises(InputError, match="not a 3-D volume"):
        read_phase(found.others[0])
