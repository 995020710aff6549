"""The library side of the Slicer module and the batch: scene content, the background command, batch planning.

The output folders used here are written with the library's own writers in the layout ``breastseg segment``
produces (a file-format contract), so these tests read exactly what the module reads in Slicer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BreastSegmentationLib import __version__
from BreastSegmentationLib.background import (
    DEVICE_CHOICES,
    HOST_OWN_PACKAGES,
    PIP_REQUIREMENTS,
    TORCH_REQUIREMENT,
    BackgroundProcess,
    FailureKind,
    ProgressEvent,
    SegmentRequest,
    cuda_device_names,
    describe_failure,
    device_label,
    installed_version,
    library_parent_dir,
    missing_requirements,
    parse_progress_line,
    pip_constraints,
    python_command,
    run_to_completion,
    segment_arguments,
    stage_title,
)
from BreastSegmentationLib.batch import (
    SUMMARY_CSV,
    SUMMARY_JSON,
    StudyResult,
    discover_studies,
    write_batch_summary,
)
from BreastSegmentationLib.cli import build_parser
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.evaluation.lesions import label_lesions
from BreastSegmentationLib.io.geometry import ijk_to_ras_matrix
from BreastSegmentationLib.reports.tables import write_csv, write_json
from BreastSegmentationLib.scene import (
    BREAST_SEGMENT,
    CENTROID_COLUMNS,
    INTEGER,
    REAL,
    TEXT,
    LESION_COLOR,
    PHASE_FRAMES,
    SequenceCandidate,
    VolumeCandidate,
    breast_labelmap,
    choose_dce_sequence,
    choose_pre_post,
    detection_table,
    frame_volume_name,
    lesion_label_image,
    lesion_labelmap,
    lesion_segment,
    lesion_table,
    overlap_table,
    read_lesion_rows,
    read_segment_outputs,
    subtraction_image,
    volume_candidate,
)

REPOSITORY = Path(__file__).resolve().parents[1]

LESION_ROWS = [
    {"id": 1, "voxels": 12, "volume_mm3": 13.44, "centroid_ras_mm": [10.5, -20.25, 7.0], "bbox_start_ijk": [1, 2, 3],
     "bbox_size_ijk": [2, 3, 2], "longest_diameter_mm": 4.5, "mean_enhancement": 1.25, "peak_enhancement": 2.0},
    {"id": 3, "voxels": 2, "volume_mm3": 2.24, "centroid_ras_mm": [-3.0, 4.0, 9.5], "bbox_start_ijk": [5, 5, 5],
     "bbox_size_ijk": [1, 2, 1], "longest_diameter_mm": 1.6, "mean_enhancement": 0.75, "peak_enhancement": 0.9},
]

METRICS = {
    "dice": 0.5, "iou": 1 / 3, "precision": 0.25, "recall": 1.0, "hd": None, "hd95": 3.5,
    "lesions": {"bins": [
        {"label": "<10", "min_mm3": 0.0, "max_mm3": 10.0, "tp": 0, "fp": 1, "fn": 0},
        {"label": "10-20", "min_mm3": 10.0, "max_mm3": 20.0, "tp": 1, "fp": 0, "fn": 2},
        {"label": ">=20", "min_mm3": 20.0, "max_mm3": None, "tp": 0, "fp": 0, "fn": 1},
    ]},
}


def like(reference: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


@pytest.fixture
def lesion_labels(oblique_image: sitk.Image) -> np.ndarray:
    """KJI label map of the 7x11x13 grid: lesion 1 (12 voxels) and lesion 3 (2 voxels), no lesion 2."""
    labels = np.zeros(sitk.GetArrayViewFromImage(oblique_image).shape, dtype=np.uint8)
    labels[1:3, 2:5, 3:5] = 1
    labels[5, 5:7, 5] = 3
    return labels


@pytest.fixture
def outputs_dir(tmp_path: Path, oblique_image: sitk.Image, lesion_labels: np.ndarray) -> Path:
    """An output folder as ``breastseg segment --reference`` writes it."""
    folder = tmp_path / "out"
    folder.mkdir()
    breast = np.zeros(lesion_labels.shape, dtype=np.uint8)
    breast[:, 1:9, 2:11] = 1
    sitk.WriteImage(like(oblique_image, breast), str(folder / "breast.nii.gz"))
    sitk.WriteImage(like(oblique_image, lesion_labels), str(folder / "lesions.nii.gz"))
    probability = like(oblique_image, lesion_labels.astype(np.float32) / 3)
    sitk.WriteImage(probability, str(folder / "lesion_probability.nii.gz"))
    write_csv(LESION_ROWS, folder / "lesions.csv")
    write_json({"lesions": 2, "device": "cpu"}, folder / "summary.json")
    write_json(METRICS, folder / "metrics.json")
    return folder


# --- segments and terminology ---------------------------------------------------------------------------------


def test_breast_terminology_is_slicers_seven_part_entry_with_the_breast_code():
    assert BREAST_SEGMENT.terminology_string == (
        "Segmentation category and type - DICOM master list"
        "~SCT^123037004^Anatomical Structure~SCT^76752008^Breast~SCT^51440002^Right and left"
        "~Anatomic codes - DICOM master list~^^~^^"
    )
    assert (BREAST_SEGMENT.segment_id, BREAST_SEGMENT.name) == ("breast", "Breast")
    assert 0 < BREAST_SEGMENT.opacity_3d < 1


def test_lesion_segment_is_a_mass_in_the_breast_with_the_recommended_colour():
    segment = lesion_segment(3)
    assert (segment.segment_id, segment.name) == ("lesion_3", "Lesion 3")
    assert segment.terminology_string == (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        "~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^"
        "~Anatomic codes - DICOM master list~SCT^76752008^Breast~^^"
    )
    assert segment.color == LESION_COLOR == pytest.approx((144 / 255, 238 / 255, 144 / 255))
    assert len(segment.terminology_string.split("~")) == 7


# --- label maps for the scene ---------------------------------------------------------------------------------


def test_breast_labelmap_keeps_voxels_and_maps_indices_to_ras(oblique_image):
    mask = np.zeros(sitk.GetArrayViewFromImage(oblique_image).shape, dtype=np.uint8)
    mask[2, 4, 6] = 7
    labelmap = breast_labelmap(like(oblique_image, mask))
    assert labelmap.kji.dtype == np.uint8
    assert np.array_equal(np.argwhere(labelmap.kji), [[2, 4, 6]]) and labelmap.kji[2, 4, 6] == 1
    assert labelmap.segment_ids() == ["breast"]
    ras = labelmap.ijk_to_ras @ np.array([6, 4, 2, 1.0])
    lps = oblique_image.TransformIndexToPhysicalPoint((6, 4, 2))
    assert ras[:3] == pytest.approx([-lps[0], -lps[1], lps[2]])


def test_lesion_labelmap_keeps_ids_and_leaves_gaps_unnamed(oblique_image, lesion_labels):
    labelmap = lesion_labelmap(like(oblique_image, lesion_labels))
    assert labelmap.segment_ids() == ["lesion_1", "", "lesion_3"]
    assert np.array_equal(labelmap.kji, lesion_labels)
    assert np.allclose(labelmap.ijk_to_ras, ijk_to_ras_matrix(oblique_image))


def test_binary_lesion_mask_is_numbered_like_the_lesion_table(oblique_image):
    mask = np.zeros(sitk.GetArrayViewFromImage(oblique_image).shape, dtype=np.uint8)
    mask[0, 0, 0:2] = 1  # two voxels
    mask[4, 4, 4] = mask[5, 5, 5] = mask[6, 6, 6] = 1  # corner-touching: one lesion of three voxels (26-connected)
    image = like(oblique_image, mask)
    labels = sitk.GetArrayFromImage(lesion_label_image(image))
    assert labels[5, 5, 5] == 1 and labels[0, 0, 0] == 2
    assert np.array_equal(labels, sitk.GetArrayFromImage(label_lesions(image)))
    assert lesion_labelmap(image).segment_ids() == ["lesion_1", "lesion_2"]


def test_empty_lesion_mask_gives_no_segments(oblique_image):
    empty = like(oblique_image, np.zeros(sitk.GetArrayViewFromImage(oblique_image).shape, dtype=np.uint8))
    assert lesion_labelmap(empty).segments == []


def test_large_label_values_keep_their_value(oblique_image):
    labels = np.zeros(sitk.GetArrayViewFromImage(oblique_image).shape, dtype=np.uint16)
    labels[3, 3, 3] = 300
    labelmap = lesion_labelmap(like(oblique_image, labels))
    assert labelmap.kji.dtype == np.uint16 and labelmap.kji[3, 3, 3] == 300
    assert len(labelmap.segments) == 300 and labelmap.segments[-1].name == "Lesion 300"


def test_subtraction_lies_on_the_pre_grid_even_when_post_does_not(oblique_image):
    pre = like(oblique_image, np.full(sitk.GetArrayViewFromImage(oblique_image).shape, 5.0, dtype=np.float32))
    post = sitk.Image([40, 40, 20], sitk.sitkInt16) + 12
    post.SetSpacing((1.5, 1.5, 3.0))
    post.SetOrigin([o - 20.0 for o in oblique_image.GetOrigin()])
    subtraction = subtraction_image(pre, post)
    assert subtraction.GetSize() == pre.GetSize() and subtraction.GetOrigin() == pre.GetOrigin()
    assert subtraction.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(sitk.GetArrayViewFromImage(subtraction), 7.0)


# --- tables ---------------------------------------------------------------------------------------------------


def test_lesion_rows_read_the_json_centroid_the_library_writes(outputs_dir):
    rows = read_lesion_rows(outputs_dir / "lesions.csv")
    assert [row.lesion_id for row in rows] == [1, 3]
    assert rows[0].centroid_ras_mm == (10.5, -20.25, 7.0)
    assert (rows[1].voxels, rows[1].volume_mm3, rows[1].longest_diameter_mm) == (2, 2.24, 1.6)
    assert (rows[0].mean_enhancement, rows[0].peak_enhancement) == (1.25, 2.0)


def test_lesion_rows_accept_three_centroid_columns_and_empty_enhancement(tmp_path):
    path = tmp_path / "lesions.csv"
    path.write_text("id,volume_mm3,centroid_ras_mm_x,centroid_ras_mm_y,centroid_ras_mm_z,mean_enhancement\n"
                    "2,8.5,1,2,3,\n", encoding="utf-8")
    (row,) = read_lesion_rows(path)
    assert (row.lesion_id, row.centroid_ras_mm, row.voxels) == (2, (1.0, 2.0, 3.0), 0)
    assert math.isnan(row.mean_enhancement) and math.isnan(row.longest_diameter_mm)


@pytest.mark.parametrize(("text", "problem"), [
    ("voxels,volume_mm3\n3,1.0\n", "lacks the column(s) id"),
    ("id,volume_mm3\n1,1.0\n", "has no centroid_ras_mm"),
])
def test_lesion_rows_name_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "lesions.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(problem)) as raised:
        read_lesion_rows(path)
    assert raised.value.path == str(path)


def test_lesion_table_columns_and_values(outputs_dir):
    columns = lesion_table(read_lesion_rows(outputs_dir / "lesions.csv"))
    by_name = {column.name: column for column in columns}
    assert list(by_name) == ["id", "volume_mm3", "longest_diameter_mm", "centroid_r", "centroid_a", "centroid_s",
                             "mean_enhancement"]
    assert by_name["id"].values == (1, 3)
    assert by_name["centroid_a"].values == (-20.25, 4.0) and by_name["centroid_a"].unit == "mm"
    assert by_name["volume_mm3"].unit == "mm3"
    assert [column.kind for column in columns] == [INTEGER] + [REAL] * 6
    assert tuple(by_name)[3:6] == CENTROID_COLUMNS


def test_lesion_table_of_no_lesions_has_the_columns_and_no_rows():
    columns = lesion_table([])
    assert len(columns) == 7 and all(column.values == () for column in columns)


def test_detection_table_counts_per_volume_bin():
    columns = {column.name: column for column in detection_table(METRICS)}
    assert columns["bin"].values == ("<10", "10-20", ">=20") and columns["bin"].kind == TEXT
    assert columns["tp"].kind == INTEGER and columns["min_mm3"].kind == REAL
    assert (columns["tp"].values, columns["fp"].values, columns["fn"].values) == ((0, 1, 0), (1, 0, 0), (0, 2, 1))
    assert columns["max_mm3"].values[:2] == (10.0, 20.0) and math.isnan(columns["max_mm3"].values[2])


def test_overlap_table_lists_the_metrics_and_marks_undefined_ones_nan():
    metric, value, unit = overlap_table(METRICS)
    assert metric.values == ("Dice", "IoU", "Precision", "Recall", "HD95", "Hausdorff distance")
    assert value.values[:5] == pytest.approx((0.5, 1 / 3, 0.25, 1.0, 3.5)) and math.isnan(value.values[5])
    assert unit.values[4:] == ("mm", "mm")
    assert (metric.kind, value.kind, unit.kind) == (TEXT, REAL, TEXT)


# --- the outputs folder ---------------------------------------------------------------------------------------


def test_read_segment_outputs_reads_every_file(outputs_dir, oblique_image, lesion_labels):
    outputs = read_segment_outputs(outputs_dir)
    assert np.array_equal(sitk.GetArrayFromImage(outputs.lesions), lesion_labels)
    assert outputs.breast.GetOrigin() == pytest.approx(oblique_image.GetOrigin())
    assert [row.lesion_id for row in outputs.lesion_rows] == [1, 3]
    assert outputs.summary == {"lesions": 2, "device": "cpu"}
    assert outputs.metrics["lesions"]["bins"][1]["fn"] == 2
    assert outputs.probability_path == outputs_dir / "lesion_probability.nii.gz"


def test_outputs_without_reference_have_no_metrics(outputs_dir):
    (outputs_dir / "metrics.json").unlink()
    (outputs_dir / "lesion_probability.nii.gz").unlink()
    outputs = read_segment_outputs(outputs_dir)
    assert outputs.metrics is None and outputs.probability_path is None


@pytest.mark.parametrize("missing", ["breast.nii.gz", "lesions.nii.gz", "lesions.csv", "summary.json"])
def test_missing_output_is_named(outputs_dir, missing):
    (outputs_dir / missing).unlink()
    with pytest.raises(InputError, match=f"lack {re.escape(missing)}"):
        read_segment_outputs(outputs_dir)


def test_damaged_summary_is_reported(outputs_dir):
    (outputs_dir / "summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="is not valid JSON"):
        read_segment_outputs(outputs_dir)


# --- choosing the pre- and post-contrast volumes ---------------------------------------------------------------


def keys(*candidates: VolumeCandidate) -> tuple[str | None, str | None]:
    return choose_pre_post(list(candidates))


def test_volume_names_with_pre_and_post_words():
    assert keys(VolumeCandidate("a", "3: ax dyn 1st pass"), VolumeCandidate("b", "2: ax dyn pre")) == ("b", "a")
    assert keys(VolumeCandidate("a", "post"), VolumeCandidate("b", "pre")) == ("b", "a")
    assert keys(VolumeCandidate("a", "t1_pre_gad"), VolumeCandidate("b", "t1_post_gad")) == ("a", "b")


def test_subtractions_and_other_series_are_set_aside():
    candidates = [VolumeCandidate("s", "SUB 1st pass"), VolumeCandidate("m", "MIP post"),
                  VolumeCandidate("t", "T2 tse"), VolumeCandidate("pre", "dyn pre"),
                  VolumeCandidate("p1", "dyn 1st pass")]
    assert choose_pre_post(candidates) == ("pre", "p1")


def test_one_recognised_volume_of_two_implies_the_other():
    assert keys(VolumeCandidate("a", "VIBRANT"), VolumeCandidate("b", "VIBRANT+C2")) == ("a", "b")
    assert keys(VolumeCandidate("a", "ax 3d"), VolumeCandidate("b", "ax 3d pre")) == ("b", "a")


def test_dicom_contrast_agent_and_temporal_position():
    assert keys(VolumeCandidate("a", "x", series_description="ax 3d", contrast_agent="Gadovist"),
                VolumeCandidate("b", "y", series_description="ax 3d")) == ("b", "a")
    twist = [VolumeCandidate(f"t{i}", "twist", contrast_agent="Gd", temporal_position=i) for i in (3, 1, 2)]
    assert choose_pre_post(twist) == ("t1", "t2")


def test_two_unnamed_series_are_ordered_by_series_number_and_unknown_stays_unknown():
    later, earlier = VolumeCandidate("a", "ax 3d", series_number=9), VolumeCandidate("b", "ax 3d", series_number=5)
    assert keys(later, earlier) == ("b", "a")
    unrelated = VolumeCandidate("a", "MRHead"), VolumeCandidate("b", "CTChest"), VolumeCandidate("c", "x")
    assert keys(*unrelated) == (None, None)
    assert keys() == (None, None)


def test_nnunet_channel_names_order_the_phases_of_one_case():
    channels = [VolumeCandidate(name, name) for name in ("duke_001_0002", "duke_001_0000", "duke_001_0001")]
    assert choose_pre_post(channels) == ("duke_001_0000", "duke_001_0001")
    assert keys(VolumeCandidate("a", "x_0000"), VolumeCandidate("b", "x_0003")) == ("a", "b")
    assert keys(VolumeCandidate("a", "x_0002"), VolumeCandidate("b", "x_0001"), VolumeCandidate("c", "x_0003")) == (
        None, None)  # no channel 0000: all post-contrast phases, none of them is pre
    assert keys(VolumeCandidate("a", "x_0000"), VolumeCandidate("b", "y_0001"), VolumeCandidate("c", "z")) == (
        None, None)  # two cases: no order between them
    assert keys(VolumeCandidate("a", "scan_0001"), VolumeCandidate("b", "scan_0000_sub")) == (None, None)


def test_the_one_time_sequence_is_the_dce_series_and_others_are_not():
    dce = SequenceCandidate("s1", "7: Ax VIBRANT MPh", frames=6, frame_tag="TriggerTime")
    dwi = SequenceCandidate("s2", "9: DWI", frames=3, frame_tag="GE.B-value")
    flip_angles = SequenceCandidate("s3", "3: T1 map", frames=4, frame_tag="FlipAngle")
    assert choose_dce_sequence([dwi, dce, flip_angles]) == "s1"
    untagged = SequenceCandidate("s4", "dce.seq.nrrd", frames=5)  # a sequence file: no frame tag, any index
    assert choose_dce_sequence([untagged]) == "s4"
    assert choose_dce_sequence([dce, untagged]) is None  # two could be: no guess
    subtraction = SequenceCandidate("s5", "8: Ax VIBRANT SUB", frames=5, frame_tag="TriggerTime")
    one_frame = SequenceCandidate("s6", "dyn", frames=1, frame_tag="TriggerTime")
    assert choose_dce_sequence([subtraction, one_frame, dwi]) is None
    assert choose_dce_sequence([]) is None


def test_frame_volumes_are_named_after_their_sequence_and_phase():
    assert frame_volume_name("7: Ax VIBRANT MPh", "pre-contrast") == "7: Ax VIBRANT MPh frame 1 (pre-contrast)"
    assert frame_volume_name("dyn", "post-contrast") == "dyn frame 2 (post-contrast)"
    assert PHASE_FRAMES == {"pre-contrast": 0, "post-contrast": 1}


def test_volume_candidate_from_dicom_tags():
    tags = {"0008,103E": " Ph2/ax 3d dyn ", "0018,0010": "Gadovist", "0020,0100": "2", "0020,0011": "x7"}
    assert volume_candidate("vtkMRMLScalarVolumeNode3", "7: Ph2", tags) == VolumeCandidate(
        "vtkMRMLScalarVolumeNode3", "7: Ph2", series_description="Ph2/ax 3d dyn", contrast_agent="Gadovist",
        temporal_position=2, series_number=None)
    assert volume_candidate("k", "pre") == VolumeCandidate("k", "pre")


# --- the background command -----------------------------------------------------------------------------------


def test_segment_arguments_for_files_and_options(tmp_path):
    request = SegmentRequest(out_dir=tmp_path / "out", pre=tmp_path / "pre.nii.gz", post=tmp_path / "post.nii.gz",
                             reference=tmp_path / "ref.nii.gz", device="cuda", models=tmp_path / "models",
                             threshold=0.35, mixed_precision=True)
    arguments = segment_arguments(request)
    assert arguments == [
        "--progress", "jsonl", "segment",
        "--pre", str(tmp_path / "pre.nii.gz"), "--post", str(tmp_path / "post.nii.gz"),
        "--out", str(tmp_path / "out"), "--device", "cuda", "--reference", str(tmp_path / "ref.nii.gz"),
        "--models", str(tmp_path / "models"), "--threshold", "0.35", "--mixed-precision",
    ]
    parsed = build_parser().parse_args(arguments)  # the command the module runs takes every one of them
    assert (parsed.device, parsed.threshold, parsed.mixed_precision) == ("cuda", 0.35, True)


def test_segment_arguments_for_a_dicom_study_with_defaults(tmp_path):
    arguments = segment_arguments(SegmentRequest(out_dir=tmp_path / "o", dicom=tmp_path / "study"))
    assert arguments == ["--progress", "jsonl", "segment", "--dicom", str(tmp_path / "study"), "--out",
                         str(tmp_path / "o"), "--device", "auto"]


@pytest.mark.parametrize("inputs", [{}, {"pre": Path("p")}, {"dicom": Path("d"), "pre": Path("p"), "post": Path("q")}])
def test_segment_arguments_refuse_incomplete_or_mixed_inputs(inputs):
    with pytest.raises(ValueError):
        segment_arguments(SegmentRequest(out_dir=Path("o"), **inputs))


def test_python_command_runs_the_library_cli_from_its_parent_folder():
    command = python_command(sys.executable, ["--version"])
    assert command[1:3] == ["-m", "BreastSegmentationLib.cli"]
    process = BackgroundProcess(command, cwd=library_parent_dir())
    lines: list[str] = []
    assert run_to_completion(process, lines.append) == 0
    assert lines == [f"breastseg {__version__}"]
    assert (library_parent_dir() / "BreastSegmentationLib" / "__init__.py").is_file()


@pytest.mark.parametrize(("line", "event"), [
    ('{"stage": "brs", "done": 0.4}', ProgressEvent("brs", 0.4)),
    ('  {"stage": "lesions", "done": 1}\n', ProgressEvent("lesions", 1.0)),
    ('{"stage": "brs", "done": 1.7}', ProgressEvent("brs", 1.0)),
    ('{"stage": "brs", "done": true}', None),
    ('{"done": 0.5}', None),
    ('{"stage": "brs", "done": 0.4', None),
    ("INFO: loading models", None),
    ("[1, 2]", None),
])
def test_parse_progress_line(line, event):
    assert parse_progress_line(line) == event


def test_stage_titles():
    assert stage_title("brs") == "Breast region"
    assert stage_title("reading DICOM headers") == "Reading dicom headers"
    assert stage_title("lesion_model") == "Lesion model"


def test_failures_are_explained():
    assert describe_failure(0, ["anything"]) is None
    bad = describe_failure(2, ['{"stage": "brs", "done": 0.1}',
                               "breastseg segment: error: /x/pre.nii.gz: image is 2-D"])
    assert bad.kind is FailureKind.BAD_INPUT and bad.message == "/x/pre.nii.gz: image is 2-D"
    oom = describe_failure(1, ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"])
    assert oom.kind is FailureKind.GPU_OUT_OF_MEMORY and oom.cpu_may_help
    no_gpu = describe_failure(2, ["breastseg segment: error: device 'cuda' was requested but no CUDA GPU is available"])
    assert no_gpu.kind is FailureKind.GPU_UNAVAILABLE and no_gpu.cpu_may_help
    killed = describe_failure(-9, ["INFO: lesions"])
    assert killed.kind is FailureKind.KILLED and "signal 9" in killed.message and not killed.cpu_may_help
    assert describe_failure(130, []).kind is FailureKind.CANCELLED
    assert describe_failure(-2, [], cancelled=True).kind is FailureKind.CANCELLED
    internal = describe_failure(1, ["Traceback (most recent call last):", '{"stage": "x", "done": 0}', "KeyError: 'x'"])
    assert internal.kind is FailureKind.INTERNAL
    assert internal.message.endswith("Traceback (most recent call last):\nKeyError: 'x'")


def python_process(code: str, **options) -> BackgroundProcess:
    return BackgroundProcess([sys.executable, "-c", code], **options)


def test_background_process_collects_stdout_and_stderr_lines():
    process = python_process(
        "import sys\n"
        "print('to stdout', flush=True)\n"
        "print('{\"stage\": \"brs\", \"done\": 0.5}', file=sys.stderr, flush=True)\n"
        "sys.exit(3)\n"
    )
    lines: list[str] = []
    assert run_to_completion(process, lines.append) == 3
    assert sorted(lines) == sorted(["to stdout", '{"stage": "brs", "done": 0.5}'])
    assert process.finished() and process.returncode == 3 and process.read_lines() == []


def test_background_process_passes_the_environment(tmp_path):
    code = "import os; print(os.environ['BREASTSEG_TEST'], os.environ['PYTHONUNBUFFERED'], os.getcwd())"
    process = python_process(code,
                             env={**os.environ, "BREASTSEG_TEST": "yes"}, cwd=tmp_path)
    assert process.wait(30) == 0
    assert process.read_lines() == [f"yes 1 {tmp_path}"]


def wait_for_line(process: BackgroundProcess, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = process.read_lines(timeout=0.2)
        if lines:
            return lines[0]
    raise AssertionError("the child printed nothing")


def test_terminate_lets_python_clean_up(tmp_path):
    marker = tmp_path / "cleaned"
    process = python_process(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # whatever the test runner's shell passed on
        "try:\n"
        "    print('ready', flush=True)\n"  # inside the try: a SIGINT right after 'ready' must be caught too
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    sys.exit(130)\n"
    )
    assert wait_for_line(process) == "ready"
    process.terminate()
    assert process.wait(20) == 130
    assert marker.exists()
    assert describe_failure(process.returncode, []).kind is FailureKind.CANCELLED


def test_the_command_hears_a_cancel_even_when_started_with_sigint_ignored():
    process = python_process(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # as a job started in a shell's background inherits it
        "from BreastSegmentationLib.cli import listen_for_interrupts\n"
        "listen_for_interrupts()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    assert wait_for_line(process) == "ready"
    process.terminate()
    assert process.wait(20) == 130


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and re.search(r"^State:\s+Z", status.read_text(), re.MULTILINE))


def test_kill_ends_the_process_and_the_processes_it_started():
    process = python_process(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    grandchild = int(wait_for_line(process))
    assert alive(grandchild)
    process.kill()
    assert process.wait(20) == -9
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


def test_cuda_device_names_match_torch():
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = [torch.cuda.get_device_name(index) for index in range(count)]
    assert cuda_device_names() == expected


def test_device_labels_name_the_gpu():
    assert device_label("auto", ["NVIDIA H100"]) == "Automatic (GPU: NVIDIA H100)"
    assert device_label("auto", []) == "Automatic (CPU, no GPU found)"
    assert device_label("cuda", ["NVIDIA H100", "NVIDIA A10"]) == "GPU: NVIDIA H100"
    assert device_label("cuda", []) == "GPU (none found)"
    assert device_label("cpu", ["NVIDIA H100"]) == "CPU"


# --- Python packages in Slicer --------------------------------------------------------------------------------


def test_missing_requirements_against_this_environment():
    numpy_version = installed_version("numpy")
    assert numpy_version == np.__version__
    assert missing_requirements(["numpy>=1.0", "SimpleITK"]) == []
    assert missing_requirements(["numpy>=9999", "no-such-distribution-breastseg>=1"]) == [
        "numpy>=9999", "no-such-distribution-breastseg>=1"]
    versions = {"monai": "1.2.0", "tqdm": "4.66.1"}
    assert missing_requirements(["monai>=1.3", "tqdm>=4.60", "safetensors"], versions.get) == [
        "monai>=1.3", "safetensors"]


def test_pip_constraints_pin_what_is_installed():
    assert pip_constraints(["numpy", "no-such-distribution-breastseg"]) == f"numpy=={np.__version__}\n"
    assert pip_constraints(["vtk", "SimpleITK"], {"vtk": "9.4.2", "SimpleITK": "2.4.0"}.get) == (
        "vtk==9.4.2\nSimpleITK==2.4.0\n")
    assert set(HOST_OWN_PACKAGES) == {"numpy", "SimpleITK", "vtk"}


def test_slicer_requirements_cover_the_library_dependencies():
    text = (REPOSITORY / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL).group(1)
    declared = {re.match(r"[A-Za-z0-9_.\-]+", item).group(0).lower() for item in re.findall(r'"([^"]+)"', block)}
    provided = {re.match(r"[A-Za-z0-9_.\-]+", item).group(0).lower()
                for item in (*PIP_REQUIREMENTS, TORCH_REQUIREMENT, *HOST_OWN_PACKAGES)}
    assert declared <= provided, f"add to background.PIP_REQUIREMENTS: {sorted(declared - provided)}"


def test_module_imports_need_neither_torch_nor_monai():
    """The Slicer module imports these before it has installed PyTorch and MONAI."""
    code = ("import sys, BreastSegmentationLib.scene, BreastSegmentationLib.background, "
            "BreastSegmentationLib.resources, BreastSegmentationLib.io.geometry, BreastSegmentationLib.io.images; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'tqdm')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


# --- batch planning -------------------------------------------------------------------------------------------


def write_volume(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Image([4, 4, 3], sitk.sitkInt16), str(path))


def write_dicom_placeholder(path: Path) -> None:
    """A file with the DICOM Part 10 preamble and magic: what study discovery looks for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\2\0")


def test_discover_studies_in_sub_folders(tmp_path):
    write_volume(tmp_path / "case1" / "case1_pre.nii.gz")
    write_volume(tmp_path / "case1" / "case1_post.nii.gz")
    write_volume(tmp_path / "case1" / "case1_sub.nii.gz")
    write_dicom_placeholder(tmp_path / "case2" / "series7" / "IM0001")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a study")
    write_volume(tmp_path / "odd" / "a.nrrd")
    studies = discover_studies(tmp_path)
    assert [study.name for study in studies] == ["case1", "case2"]
    assert (studies[0].pre.name, studies[0].post.name) == ("case1_pre.nii.gz", "case1_post.nii.gz")
    assert studies[0].dicom is None
    assert (studies[1].dicom, studies[1].pre) == (tmp_path / "case2", None)


def test_discover_studies_named_as_nnunet_channels(tmp_path):
    for channel in ("0000", "0001", "0002"):
        write_volume(tmp_path / "images" / "ispy2_100899" / f"ispy2_100899_{channel}.nii.gz")
    (study,) = discover_studies(tmp_path / "images")
    assert (study.pre.name, study.post.name) == ("ispy2_100899_0000.nii.gz", "ispy2_100899_0001.nii.gz")


def test_nnunet_channels_without_the_pre_contrast_channel_are_no_study(tmp_path):
    for channel in ("0001", "0002"):
        write_volume(tmp_path / "images" / "case7" / f"case7_{channel}.nii.gz")
    with pytest.raises(InputError, match="holds no study"):
        discover_studies(tmp_path / "images")


def test_a_folder_holding_one_study_is_that_study(tmp_path):
    study_dir = tmp_path / "patient_9"
    write_volume(study_dir / "pre.nii.gz")
    write_volume(study_dir / "post.nii.gz")
    (study,) = discover_studies(study_dir)
    assert (study.name, study.pre, study.post) == ("patient_9", study_dir / "pre.nii.gz", study_dir / "post.nii.gz")


def test_no_study_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no study"):
        discover_studies(tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        discover_studies(tmp_path / "missing")


def test_batch_summary_files(tmp_path):
    results = [
        StudyResult("a", "ok", 0, "", str(tmp_path / "a"), 2, 15.68, 12.5),
        StudyResult("b", "bad input", 2, "/b/pre.nii.gz: image is 2-D", str(tmp_path / "b"), None, None, 0.1),
    ]
    csv_path = write_batch_summary(results, tmp_path)
    assert csv_path == tmp_path / SUMMARY_CSV
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ("study,status,exit_code,message,output_dir,lesions,lesion_volume_mm3,seconds,dice,"
                        "reference_lesions_found,reference_lesions_missed,false_positive_lesions")
    assert lines[2].startswith("b,bad input,2,/b/pre.nii.gz: image is 2-D,")
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text(encoding="utf-8"))
    assert (summary["ok"], summary["total"]) == (1, 2) and summary["studies"][0]["lesions"] == 2
    assert "scored" not in summary  # no study had a reference


def test_slicer_batch_script_reads_the_documented_command_line():
    """``Slicer --no-splash --no-main-window --python-script batch.py -- --input-dir DIR --output-dir OUT``."""
    path = REPOSITORY / "BreastSegmentation" / "Scripts" / "batch.py"
    spec = importlib.util.spec_from_file_location("slicer_batch_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # module level needs no Slicer: it only defines functions
    arguments = script.parseArguments(["--", "--input-dir", "in", "--output-dir", "out", "--device", "cpu",
                                       "--threshold", "0.4"], DEVICE_CHOICES)
    assert (arguments.input_dir, arguments.output_dir, arguments.device) == (Path("in"), Path("out"), "cpu")
    assert (arguments.threshold, arguments.models, arguments.install_dependencies) == (0.4, None, False)
    assert arguments.reference_dir is None
    scored = script.parseArguments(["--input-dir", "in", "--output-dir", "out", "--reference-dir", "refs"],
                                   DEVICE_CHOICES)
    assert scored.reference_dir == Path("refs")
    with pytest.raises(SystemExit):
        script.parseArguments(["--input-dir", "in", "--output-dir", "out", "--device", "tpu"], DEVICE_CHOICES)
