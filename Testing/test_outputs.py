"""Atomic outputs: whole or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from BreastSegmentationLib.io.outputs import atomic_output_dir, atomic_output_file


def test_output_file_appears_only_on_success_with_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with atomic_output_file(target) as temporary:
        assert temporary.name.endswith(".csv") and temporary.parent == target.parent
        temporary.write_text("a,b\n")
        assert not target.exists()
    assert target.read_text() == "a,b\n"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_failed_output_file_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_output_dir_moves_everything_or_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(ValueError), atomic_output_dir(final) as staging:
        (staging / "a.txt").write_text("a")
        raise ValueError("cancelled")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(final) as staging:
        (staging / "nested").mkdir()
        (staging / "nested" / "b.txt").write_text("b")
        (staging / "a.txt").write_text("a")
    assert (final / "a.txt").read_text() == "a" and (final / "nested" / "b.txt").read_text() == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
