"""Atomic outputs: results appear whole or not at all.

Files are written into a hidden staging folder beside their destination and moved into place only when
everything succeeded, so an error or a cancel never leaves partial or corrupted output behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``final_dir`` (created if needed).

    On any exception the staging folder is removed and ``final_dir`` is left as it was.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".partial", dir=final_dir.parent))
    try:
        yield staging
        final_dir.mkdir(parents=True, exist_ok=True)
        for source in sorted(staging.rglob("*")):
            target = final_dir / source.relative_to(staging)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_file(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it into place only on success.

    The temporary name keeps the destination's suffixes so that writers choosing a format by extension
    (SimpleITK, matplotlib) write the right one.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(final_path.suffixes)
    handle, temporary = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=f".partial{suffixes}", dir=final_path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes the file private; outputs are not
        os.replace(temporary, final_path)
    finally:
        temporary.unlink(missing_ok=True)
