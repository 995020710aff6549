"""Table writers shared by every report: CSV and JSON files written atomically, Markdown tables as text.

Rows are lists of flat dictionaries (one dictionary per row, keys are column names). Values that are lists or
dictionaries (a centroid, a bounding box) go into a CSV cell as compact JSON, so that a spreadsheet still shows
one row per item and a program can parse the cell back. ``None`` is an empty CSV cell and ``null`` in JSON.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.outputs import atomic_output_file


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column names in order of first appearance over all rows."""
    return list(dict.fromkeys(key for row in rows for key in row))


def to_builtin(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and tuples turned into JSON-able Python builtins (recursively)."""
    if isinstance(value, Mapping):
        return {str(key): to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_builtin(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _csv_cell(value: Any) -> str | int | float:
    value = to_builtin(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` to ``path`` as CSV (atomically); ``columns`` fixes the header, also for an empty table."""
    columns = list(columns) if columns is not None else table_columns(rows)
    with atomic_output_file(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _csv_cell(row.get(key)) for key in columns})
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` as indented JSON (atomically); NaN or infinity is refused, not written."""
    text = json.dumps(to_builtin(obj), indent=2, allow_nan=False)
    with atomic_output_file(path) as temporary:
        Path(temporary).write_text(text + "\n", encoding="utf-8")
    return Path(path)


def _markdown_cell(value: Any, float_digits: int) -> str:
    value = to_builtin(value)
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{float_digits}f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   float_digits: int = 3) -> str:
    """``rows`` as a GitHub Markdown table; floats with ``float_digits`` decimals, numbers right-aligned."""
    columns = list(columns) if columns is not None else table_columns(rows)
    numeric = {
        column: bool(rows) and all(isinstance(to_builtin(row.get(column)), (int, float, type(None))) for row in rows)
        for column in columns
    }
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if numeric[column] else "---" for column in columns) + "|"
    body = ["| " + " | ".join(_markdown_cell(row.get(column), float_digits) for column in columns) + " |"
            for row in rows]
    return "\n".join([header, rule, *body]) + "\n"
