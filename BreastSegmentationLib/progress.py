"""Progress reporting and cancellation: one small interface passed from a face down to long loops.

A face (CLI, Slicer module) gives a callback ``(stage, fraction_done)``; long loops call
:meth:`Progress.update`, which also raises :class:`Cancelled` once cancellation was requested.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
ProgressCallback = Callable[[str, float], None]


class Cancelled(Exception):
    """Raised inside long work when the user asked to cancel it."""


class Progress:
    """Reports ``(stage, done)`` to an optional callback and carries a cancellation flag."""

    def __init__(self, callback: ProgressCallback | None = None, cancel_event: threading.Event | None = None):
        self.callback = callback
        self.cancel_event = cancel_event or threading.Event()

    def cancel(self) -> None:
        """Ask the running work to stop at its next progress update."""
        self.cancel_event.set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("cancelled by the user")

    def update(self, stage: str, done: float) -> None:
        """Report that ``stage`` is ``done`` (0..1) complete; raise :class:`Cancelled` if asked to stop."""
        self.check_cancelled()
        if self.callback is not None:
            self.callback(stage, min(max(float(done), 0.0), 1.0))

    def track(self, items: Iterable[T], stage: str, total: int | None = None) -> Iterator[T]:
        """Yield ``items`` while reporting the fraction done of ``stage``."""
        if total is None:
            items = list(items)
            total = len(items)
        self.update(stage, 0.0)
        for index, item in enumerate(items, start=1):
            yield item
            self.update(stage, index / max(total, 1))


def silent() -> Progress:
    """A progress object that reports nowhere (library default)."""
    return Progress()
