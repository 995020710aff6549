"""Console faces of :class:`~BreastSegmentationLib.progress.Progress`: a tqdm bar or JSON lines."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from tqdm import tqdm

from ..progress import Progress


def _bar_callback() -> tuple[Callable[[str, float], None], Callable[[], None]]:
    """One tqdm bar per stage, drawn on standard error."""
    state: dict[str, tqdm | str | None] = {"bar": None, "stage": None}

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    def report(stage: str, done: float) -> None:
        if stage != state["stage"]:
            close()
            state["stage"] = stage
            state["bar"] = tqdm(total=100, desc=stage, unit="%", file=sys.stderr, leave=False,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        bar = state["bar"]
        bar.n = round(done * 100)
        bar.refresh()

    return report, close


def _jsonl_callback(stage: str, done: float) -> None:
    """``{"stage": ..., "done": ...}`` per line, read by the Slicer module's background process."""
    print(json.dumps({"stage": stage, "done": round(done, 4)}), file=sys.stderr, flush=True)


def make_progress(mode: str) -> tuple[Progress, Callable[[], None]]:
    """A :class:`Progress` for ``mode`` (bar, jsonl, none) and a function that closes its display."""
    if mode == "bar":
        report, close = _bar_callback()
        return Progress(report), close
    if mode == "jsonl":
        return Progress(_jsonl_callback), lambda: None
    return Progress(), lambda: None


def print_json(payload: object) -> None:
    """Write ``payload`` as indented JSON to standard output."""
    json.dump(payload, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
