"""One writer per output folder: an advisory lock the kernel drops when its process dies.

``with folder_lock(out, "output_dir"):`` holds ``<out>/.avatar3d.lock`` with
``flock`` for the whole job (the driver's process). A second job writing into
the same folder fails at once, in one line naming the holder (pid, host, since
when), instead of both writing and leaving duplicate rows. A job killed with
SIGKILL leaves the file but not the lock, so a re-run always resumes.

Local and network file systems (NFS maps flock onto its own locks); object
stores (``s3://``) have no such lock and are not locked: docs/cluster.md.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from avatar3d.config import ConfigError

LOCK_FILE = ".avatar3d.lock"


@contextmanager
def folder_lock(folder: str | Path, field: str = "output_dir") -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the block -> the lock file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"{field}={str(folder)!r} is in use by another avatar3d job ({holder}); wait for it "
                              "to finish or pass another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
