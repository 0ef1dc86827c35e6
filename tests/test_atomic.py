"""The one atomic writer: the old content or the complete new one, never a torn file; nothing left behind."""
import os

import numpy as np
import pytest

from avatar3d.atomic import TMP_MARK, atomic_folder, atomic_path, atomic_write


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "state.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["state.json"]


def test_a_failing_writer_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "stats.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez(tmp, a=np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix=".npz") as tmp:
            np.savez(tmp, a=np.arange(5))
            raise RuntimeError("killed mid-write")
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["stats.npz"]


def test_a_temporary_name_carries_the_mark_a_resume_looks_for(tmp_path):
    with atomic_path(tmp_path / "part-0.parquet") as tmp:
        assert TMP_MARK in tmp.name and tmp.name.startswith(".") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")


def test_atomic_folder_swaps_the_whole_folder_or_nothing(tmp_path):
    folder = tmp_path / "prior"
    with atomic_folder(folder) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_folder(folder) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError("half-way")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    with atomic_folder(folder) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["prior"]


def test_replacing_a_folder_is_one_atomic_exchange_here(tmp_path, monkeypatch):
    import avatar3d.atomic as atomic

    calls = []
    real = atomic._exchange
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: calls.append((a, b)) or real(a, b))
    folder = tmp_path / "prior"
    with atomic_folder(folder) as tmp:
        (tmp / "v").write_text("1")
    with atomic_folder(folder) as tmp:
        (tmp / "v").write_text("2")
    assert len(calls) == 1 and (folder / "v").read_text() == "2"  # Linux: renameat2 swapped them in one step
    assert sorted(os.listdir(tmp_path)) == ["prior"]


def test_where_no_exchange_exists_the_fallback_still_replaces(tmp_path, monkeypatch):
    import avatar3d.atomic as atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    folder = tmp_path / "prior"
    for version in ("1", "2"):
        with atomic_folder(folder) as tmp:
            (tmp / "v").write_text(version)
    assert (folder / "v").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["prior"]
