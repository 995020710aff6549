"""Write the synthetic training data of the bundled models (the recipe behind configs/bundled_*.json).

    python configs/bundled_data.py [--out data]

- ``data/phantom-train``: 40 phantom studies (seed 1000), the breast model's dataset.
- ``data/phantom-lesions-2000`` and ``-2001``: 50 studies each with 1-3 lesions.
- ``data/phantom-lesions.csv``: every study of the three with a lesion (133), the dataset of configs/bundled_lesion.json
  and configs/lesion_2p5d.json; case ids are the studies' patient ids, unique across the folders.

Seeds 9000 and up are never used here: benchmarks/accuracy.py holds them out. About 25 minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from BreastSegmentationLib.data.datasets import load_dataset, write_manifest
from BreastSegmentationLib.data.phantom import PhantomConfig, write_cases

SETS = (("phantom-train", 40, 1000, PhantomConfig()),
        ("phantom-lesions-2000", 50, 2000, PhantomConfig(lesion_count_range=(1, 3))),
        ("phantom-lesions-2001", 50, 2001, PhantomConfig(lesion_count_range=(1, 3))))


def has_lesions(case_folder: Path) -> bool:
    return bool(json.loads((case_folder / "case.json").read_text())["lesions"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data"), help="parent folder of the datasets (default data)")
    args = parser.parse_args(argv)
    lesion_records = []
    for name, cases, seed, config in SETS:
        folder = args.out / name
        if not folder.exists():
            write_cases(folder, cases, seed, config)
        lesion_records += [dataclasses.replace(record, case_id=record.patient_id)
                           for record in load_dataset(folder) if has_lesions(Path(record.pre).parent)]
    print(write_manifest(lesion_records, args.out / "phantom-lesions.csv"), len(lesion_records), "studies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
