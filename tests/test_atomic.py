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


# A child process replaces a folder and is SIGKILLed at one step of it; the folder must then hold the old or
# the new version, complete, and the next replace must leave nothing of the killed one behind.
_CHILD = r"""
import os, signal, sys
from pathlib import Path
import avatar3d.atomic as atomic

folder, step, fallback = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_exchange, real_rename, real_rmtree = atomic._exchange, Path.rename, atomic.shutil.rmtree

def exchange(a, b):
    if step == "before-exchange":
        die()
    if fallback:
        return False
    done = real_exchange(a, b)
    if step == "after-exchange":
        die()
    return done

def rename(self, target):
    result = real_rename(self, target)
    if step == "between-renames" and atomic.OLD_MARK in Path(target).name:
        die()
    return result

def rmtree(path, *a, **k):
    if step == "before-cleanup" and Path(path).name.startswith("." + folder.name):
        die()
    return real_rmtree(path, *a, **k)

atomic._exchange, Path.rename, atomic.shutil.rmtree = exchange, rename, rmtree
with atomic.atomic_folder(folder) as tmp:
    for i in range(3):
        (tmp / f"part-{i}").write_text("new")
        if step == "mid-write" and i == 1:
            die()
"""

STEPS = [("mid-write", "0"), ("before-exchange", "0"), ("after-exchange", "0"), ("before-cleanup", "0"),
         ("between-renames", "1"), ("before-cleanup", "1")]


@pytest.mark.parametrize("step, fallback", STEPS, ids=[f"{s}{'-fallback' if f == '1' else ''}" for s, f in STEPS])
def test_a_replace_killed_at_any_step_leaves_old_or_new_and_the_next_one_cleans_up(tmp_path, step, fallback):
    import subprocess
    import sys

    folder = tmp_path / "pairs"
    with atomic_folder(folder) as tmp:
        for i in range(2):
            (tmp / f"part-{i}").write_text("old")
    run = subprocess.run([sys.executable, "-c", _CHILD, str(folder), step, fallback], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == -9, run.stderr  # it really died at that step
    old, new = {"part-0": "old", "part-1": "old"}, {f"part-{i}": "new" for i in range(3)}
    seen = {p.name: p.read_text() for p in folder.iterdir()} if folder.exists() else None
    if step == "between-renames":
        assert seen is None  # the name is empty for a moment; the next writer (or recover_folder) restores it
    else:
        assert seen in (old, new), seen
    assert any(p.name != "pairs" for p in tmp_path.iterdir())  # the killed replace left something behind

    with atomic_folder(folder) as tmp:  # the next run
        (tmp / "part-0").write_text("next")
    assert sorted(os.listdir(tmp_path)) == ["pairs"] and (folder / "part-0").read_text() == "next"


def test_recover_puts_back_a_folder_parked_by_a_killed_fallback(tmp_path):
    from avatar3d.atomic import OLD_MARK, recover_folder

    parked = tmp_path / f".pairs{OLD_MARK}1234abcd"
    parked.mkdir()
    (parked / "part-0").write_text("old")
    (tmp_path / f".pairs{TMP_MARK}5678").mkdir()
    assert len(recover_folder(tmp_path / "pairs")) == 2
    assert sorted(os.listdir(tmp_path)) == ["pairs"] and (tmp_path / "pairs" / "part-0").read_text() == "old"
