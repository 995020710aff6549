"""The recipe of the bundled models' training data (configs/ is a folder of scripts, put on the path here)."""

import sys
from pathlib import Path

from BreastSegmentationLib.data.datasets import CaseRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
from bundled_data import first_of_each_lesion_set, left_out  # noqa: E402


def record(patient_id: str) -> CaseRecord:
    return CaseRecord(patient_id, patient_id, Path(f"{patient_id}/pre.nii.gz"), Path(f"{patient_id}/post.nii.gz"))


def test_fine_grid_dataset_takes_the_first_studies_of_each_lesion_set_only():
    ids = ["PHANTOM-1000-003", "PHANTOM-2000-000", "PHANTOM-2000-039", "PHANTOM-2000-040", "PHANTOM-2001-012",
           "PHANTOM-2003-024", "PHANTOM-9000-001"]
    chosen = first_of_each_lesion_set([record(i) for i in ids], 40)
    assert [r.patient_id for r in chosen] == ["PHANTOM-2000-000", "PHANTOM-2000-039", "PHANTOM-2001-012",
                                              "PHANTOM-2003-024"]


def test_second_fine_grid_dataset_starts_with_the_studies_the_first_left_out():
    records = [record(i) for i in ("PHANTOM-1000-003", "PHANTOM-2000-039", "PHANTOM-2000-040", "PHANTOM-2003-024")]
    fine = first_of_each_lesion_set(records, 40)
    rest = left_out(records, fine)
    assert [r.patient_id for r in rest] == ["PHANTOM-1000-003", "PHANTOM-2000-040"]
    assert not {r.patient_id for r in rest} & {r.patient_id for r in fine}
