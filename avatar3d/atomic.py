"""The project's one way to write a file or a folder that a crash must not leave half-written.

A writer works on a temporary sibling (``.<name>.tmp-<random>``); only when it
finished is the data fsynced and the temporary renamed over the final name
(``os.replace``, atomic on POSIX). A reader, a resumed job or a crash
therefore sees the old version or the complete new one, never a torn file.

* :func:`atomic_write` - bytes or text you already hold;
* :func:`atomic_path` - a path to hand to a library's own writer
  (``save_file``, ``pq.write_table``, ``np.savez``, ``shutil.copyfile``);
* :func:`atomic_folder` - a folder of several files, replaced as a whole (one
  ``renameat2`` exchange on Linux, so a crash leaves the old or the new one).

Standard library only, so light modules (configs, the CLI) use it too.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


TMP_MARK = ".tmp-"  # in every temporary name: a resumed job can recognise what a killed one left


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}{suffix}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, fsync it and
    rename it to ``path``. ``suffix`` keeps an extension a writer insists on (``np.savez`` adds ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, suffix)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` so that ``path`` holds either its old content or the complete new one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot, so the caller falls back."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc / not Linux
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system has no exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


OLD_MARK = ".old-"  # the fallback's parked previous folder: .<name>.old-<random>


def recover_folder(folder: str | Path) -> list[Path]:
    """Undo what a replace of ``folder`` killed part-way left (the caller is its only writer): a previous
    folder parked by the two-rename fallback goes back when ``folder`` is missing; unfinished temporaries
    and parked copies are removed. -> the leftovers found."""
    folder = Path(folder)
    parked = sorted(folder.parent.glob(f".{folder.name}{OLD_MARK}*"), key=lambda p: p.stat().st_mtime)
    leftovers = [*parked, *folder.parent.glob(f".{folder.name}{TMP_MARK}*")]
    if parked and not folder.exists():
        parked.pop().rename(folder)  # killed between the fallback's two renames: the old one is complete
    for path in [*parked, *folder.parent.glob(f".{folder.name}{TMP_MARK}*")]:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return leftovers


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success replace ``folder`` with it (every file fsynced). The
    caller is the folder's only writer (it holds its lock): what an earlier, killed replace left is undone
    first (:func:`recover_folder`)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    tmp = _tmp_sibling(folder)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                _fsync_file(child)
        if not folder.exists():
            tmp.rename(folder)
        elif _exchange(tmp, folder):  # one atomic step: the old folder now sits at tmp
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # no renameat2 here: two renames; a crash between them parks the old one at .<name>.old-*,
            # which the next replace (recover_folder) puts back
            old = folder.with_name(f".{folder.name}{OLD_MARK}{uuid.uuid4().hex[:8]}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
