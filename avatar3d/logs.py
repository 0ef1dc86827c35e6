"""One logging set-up for every entry point: the CLI, Ray Train workers, the jobs/ scripts.

Library modules log through ``logging.getLogger(__name__)`` and never configure
logging themselves; an entry point calls :func:`setup_logging` once. Results a
command prints on purpose (a summary, file paths, a table) stay on stdout;
everything else (progress, notes, warnings) is a log record on stderr, in one
format::

    [14:03:11] tick 3    kimg 0.600 ...
    [14:03:12] WARNING: the cluster shows 0 GPUs, ...

The level is the argument, else ``$AVATAR3D_LOG_LEVEL``, else INFO.
``avatar3d --quiet`` sets WARNING and exports it, so the Ray workers a local
run starts follow it (on a cluster, put it in the job's runtime env).
Only the ``avatar3d`` logger is touched: other libraries' logging stays as
their users set it; the few third-party warnings in :data:`NOISE` are hidden
below DEBUG (``-v`` shows them).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

LEVEL_ENV = "AVATAR3D_LOG_LEVEL"
LOGGER = "avatar3d"

# Third-party warnings a user cannot act on, hidden unless the level is DEBUG (the test suite hides the
# same ones, pyproject.toml): importing controlnet-aux registers every detector (timm registry clashes,
# optional mediapipe) and uses deprecated timm and torch.jit paths.
NOISE = [
    dict(module=r"controlnet_aux\..*", category=UserWarning),
    dict(module=r"timm\..*", category=UserWarning),
    dict(module=r"timm\..*", category=FutureWarning),
    dict(message=r"`torch\.jit\.script` is deprecated", category=FutureWarning),
]


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return text.replace("] ", f"] {record.levelname}: ", 1)
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture, a redirected stream)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(_Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level: str | int | None = None) -> logging.Logger:
    """Configure the ``avatar3d`` logger (idempotent) -> it. ``level``: a name ("INFO", "WARNING") or number."""
    level = level if level is not None else os.environ.get(LEVEL_ENV, "INFO")
    if isinstance(level, str):
        name = level.strip().upper()
        if name not in logging.getLevelNamesMapping():
            raise ValueError(f"log level {level!r} is not known: pass DEBUG, INFO, WARNING or ERROR "
                             f"(${LEVEL_ENV})")
        level = logging.getLevelNamesMapping()[name]
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(level)
    logger.propagate = False  # one line per record, whatever the root logger has
    if level > logging.DEBUG:
        for rule in NOISE:
            warnings.filterwarnings("ignore", **rule)
    return logger
