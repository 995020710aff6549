"""The one exception type for problems a user can fix (bad input, bad configuration).

Faces turn it into a clear message: the CLI prints it and exits with code 2, the Slicer module shows an
error dialog. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input or usage: the message names the file (when there is one) and the problem."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
