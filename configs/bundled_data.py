"""Write the synthetic training data of the bundled models (the recipe behind configs/bundled_*.json).

    python configs/bundled_data.py [--out data] [--extended] [--fine-second]

- ``data/phantom-train``: 40 phantom studies (seed 1000), the breast model's dataset.
- ``data/phantom-lesions-2000`` and ``-2001``: 50 studies each with 1-3 lesions.
- ``data/phantom-lesions.csv``: every study of the three with a lesion (133), the dataset of configs/bundled_lesion.json
  and configs/lesion_2p5d.json; case ids are the studies' patient ids, unique across the folders.
- With ``--extended`` also ``data/phantom-lesions-2002`` (25 studies with 1-3 lesions) and ``-2003`` (25 harder ones:
  more non-mass enhancement, fainter lesions, stronger background enhancement), and
  ``data/phantom-lesions-extended.csv``: the 133 and these 50, the dataset of configs/lesion_extended.json (the
  second network of the bundled lesion ensemble), and ``data/phantom-lesions-fine.csv``: the first 40 studies of each
  of the four lesion sets (130), the dataset of configs/lesion_fine*.json (training on a 0.7 mm grid holds twice the
  memory of a 1 mm one per study, and these fit in 24 GB).
- With ``--fine-second`` (implies ``--extended``) also ``data/phantom-lesions-2004`` (40 studies with 1-3 lesions)
  and ``-2005`` (35 harder ones), and ``data/phantom-lesions-fine-second.csv``: the 53 extended studies the fine-grid
  set leaves out and these 75 (128), the dataset of configs/lesion_fine_second.json: a second 0.7 mm network that has
  seen none of the first one's studies, so that the two make fewer of the same mistakes.

Seeds 9000 and up are never used here: benchmarks/accuracy.py holds them out, and operating_point.py tunes on seeds
3000 and up. About 25 minutes on two cores (more on a busy machine), 15 more with ``--extended`` and 5 more with
``--fine-second``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from BreastSegmentationLib.data.datasets import CaseRecord, load_dataset, write_manifest
from BreastSegmentationLib.data.phantom import PhantomConfig, write_cases

WITH_LESIONS = PhantomConfig(lesion_count_range=(1, 3))
HARDER = dataclasses.replace(
    WITH_LESIONS, lesion_conspicuity_range=(0.25, 1.5),
    lesion_type_probabilities={"round": 0.2, "lobulated": 0.2, "irregular": 0.3, "non_mass": 0.3},
    bpe_probabilities={"minimal": 0.2, "mild": 0.3, "moderate": 0.3, "marked": 0.2})
SETS = (("phantom-train", 40, 1000, PhantomConfig()),
        ("phantom-lesions-2000", 50, 2000, WITH_LESIONS),
        ("phantom-lesions-2001", 50, 2001, WITH_LESIONS))
EXTENDED_SETS = (("phantom-lesions-2002", 25, 2002, WITH_LESIONS),
                 ("phantom-lesions-2003", 25, 2003, HARDER))
FINE_SECOND_SETS = (("phantom-lesions-2004", 40, 2004, WITH_LESIONS),
                    ("phantom-lesions-2005", 35, 2005, HARDER))
#: Studies taken from each lesion set (seeds 2000-2003) for the fine-grid dataset.
FINE_STUDIES_PER_SET = 40


def has_lesions(case_folder: Path) -> bool:
    return bool(json.loads((case_folder / "case.json").read_text())["lesions"])


def lesion_records(parent: Path, sets: tuple[tuple[str, int, int, PhantomConfig], ...]) -> list[CaseRecord]:
    """Dataset records of every study with a lesion in ``sets`` under ``parent`` (writing missing sets first)."""
    records = []
    for name, cases, seed, config in sets:
        folder = parent / name
        if not folder.exists():
            write_cases(folder, cases, seed, config)
        records += [dataclasses.replace(record, case_id=record.patient_id)
                    for record in load_dataset(folder) if has_lesions(Path(record.pre).parent)]
    return records


def first_of_each_lesion_set(records: list[CaseRecord], count: int) -> list[CaseRecord]:
    """The records of the studies numbered below ``count`` in each lesion set (patient ids PHANTOM-<seed>-<number>)."""
    lesion_seeds = {str(seed) for name, _, seed, _ in SETS + EXTENDED_SETS if name.startswith("phantom-lesions")}
    return [record for record in records
            if record.patient_id.split("-")[1] in lesion_seeds and int(record.patient_id.split("-")[2]) < count]


def left_out(records: list[CaseRecord], chosen: list[CaseRecord]) -> list[CaseRecord]:
    """The records of ``records`` whose patients are not among ``chosen``'s."""
    taken = {record.patient_id for record in chosen}
    return [record for record in records if record.patient_id not in taken]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data"), help="parent folder of the datasets (default data)")
    parser.add_argument("--extended", action="store_true",
                        help="also write the 50 studies of configs/lesion_extended.json and its manifest")
    parser.add_argument("--fine-second", action="store_true",
                        help="also (with --extended) the 75 studies of configs/lesion_fine_second.json and its manifest")
    args = parser.parse_args(argv)
    bundled = lesion_records(args.out, SETS)
    print(write_manifest(bundled, args.out / "phantom-lesions.csv"), len(bundled), "studies")
    if args.extended or args.fine_second:
        extended = bundled + lesion_records(args.out, EXTENDED_SETS)
        print(write_manifest(extended, args.out / "phantom-lesions-extended.csv"), len(extended), "studies")
        fine = first_of_each_lesion_set(extended, FINE_STUDIES_PER_SET)
        print(write_manifest(fine, args.out / "phantom-lesions-fine.csv"), len(fine), "studies")
    if args.fine_second:
        second = left_out(extended, fine) + lesion_records(args.out, FINE_SECOND_SETS)
        print(write_manifest(second, args.out / "phantom-lesions-fine-second.csv"), len(second), "studies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
