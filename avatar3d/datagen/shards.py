"""Parquet shards of the multi-view dataset: atomic writes, resume scan, card, EG3D export.

Layout of a dataset folder::

    <output_dir>/
      specs.parquet          every planned row (no pixels), written before generation
      job.json               what fixes the content of rows (seed, styles, models, ...)
      shards/part-<run>-<seq>.parquet   at most rows_per_file rows each
      dataset_card.json      counts per style / view / bin, config, model ids, timings
      quarantine/            shards resume could not read, moved aside (never deleted)
      .avatar3d.lock         held by the job writing the folder (avatar3d.lock)

Crash safety: a shard is written under a temporary name (avatar3d.atomic) and
renamed with ``os.replace`` (atomic on POSIX), so a reader or a resumed job
never sees a half-written shard under its final name. Resume reads the ``id``
column of every shard, removes leftover temporaries of our own, moves shards
it cannot read (a full disk, an I/O error, someone else's file) to
``quarantine/`` and generates their rows again.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from avatar3d.datagen.dataset import SHARD_GLOB, SHARDS_DIR, read_table
from avatar3d.datagen.schema import FORMAT_VERSION, ROW_SCHEMA
from avatar3d.atomic import TMP_MARK, atomic_folder, atomic_path, atomic_write

SPECS_FILE = "specs.parquet"
JOB_FILE = "job.json"
CARD_FILE = "dataset_card.json"
TMP_SUFFIX = ".tmp"


def shards_dir(dataset_dir) -> Path:
    return Path(dataset_dir) / SHARDS_DIR


def write_atomic_table(table: pa.Table, path: Path) -> Path:
    """Write a Parquet file so that ``path`` is either absent or complete."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_atomic_json(data, path: Path) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False))


class ShardWriter:
    """Buffers rows and writes ``part-<run_tag>-<seq>.parquet`` files of at most ``rows_per_file`` rows."""

    def __init__(self, dataset_dir, rows_per_file: int, run_tag: str, schema: pa.Schema = ROW_SCHEMA):
        self.dir = shards_dir(dataset_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows_per_file = rows_per_file
        self.run_tag = run_tag
        self.schema = schema
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.seq = 0
        self.written: list[Path] = []
        self.rows_written = 0

    def add(self, table: pa.Table, on_written=None) -> list[Path]:
        """Queue rows; write every full shard, calling ``on_written(path, rows_written)`` after each."""
        self._pending.append(table.cast(self.schema) if table.schema != self.schema else table)
        self._pending_rows += table.num_rows
        out = []
        while self._pending_rows >= self.rows_per_file:
            out.append(self._write(self.rows_per_file))
            if on_written is not None:
                on_written(out[-1], self.rows_written)
        return out

    def flush(self, on_written=None) -> list[Path]:
        """Write what is left (a final, shorter shard)."""
        if not self._pending_rows:
            return []
        path = self._write(self._pending_rows)
        if on_written is not None:
            on_written(path, self.rows_written)
        return [path]

    def _write(self, n: int) -> Path:
        buffered = pa.concat_tables(self._pending)
        head, rest = buffered.slice(0, n), buffered.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        path = self.dir / f"part-{self.run_tag}-{self.seq:05d}.parquet"
        self.seq += 1
        write_atomic_table(head.combine_chunks().replace_schema_metadata(self.schema.metadata), path)
        self.written.append(path)
        self.rows_written += head.num_rows
        return path


@dataclass
class ResumeState:
    """What a dataset folder already holds."""

    done_ids: set[str] = field(default_factory=set)
    shards: list[Path] = field(default_factory=list)
    removed_tmp: list[Path] = field(default_factory=list)
    quarantined: list[tuple[Path, str]] = field(default_factory=list)  # (where it went, why)
    duplicate_ids: int = 0


QUARANTINE_DIR = "quarantine"


def quarantine(path: Path, dataset_dir) -> Path:
    """Move a shard resume cannot use out of ``shards/`` into ``<dataset>/quarantine/`` (never delete it:
    an I/O error or a stranger's file may still hold good data) -> its new path."""
    folder = Path(dataset_dir) / QUARANTINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{path.suffix}"
    os.replace(path, target)
    return target


def scan_for_resume(dataset_dir, clean: bool = True) -> ResumeState:
    """Ids already written. When ``clean``: our own half-written temporaries are removed, and shards
    that cannot be read as ours are moved to ``quarantine/``."""
    state = ResumeState()
    folder = shards_dir(dataset_dir)
    if not folder.is_dir():
        return state
    for tmp in sorted({*folder.glob("*" + TMP_SUFFIX), *folder.glob(f".*{TMP_MARK}*")}):
        state.removed_tmp.append(tmp)
        if clean:
            tmp.unlink(missing_ok=True)
    for path in sorted(folder.glob(SHARD_GLOB)):
        try:
            ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        except (pa.ArrowException, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            state.quarantined.append((quarantine(path, dataset_dir) if clean else path, reason))
            continue
        before = len(state.done_ids)
        state.done_ids.update(ids)
        state.duplicate_ids += len(ids) - (len(state.done_ids) - before)
        state.shards.append(path)
    return state


def drop_duplicate_rows(dataset_dir) -> int:
    """Keep the first row of every id (shards in name order): a shard holding later copies is rewritten
    without them (atomically), one holding nothing new is moved to ``quarantine/``. -> rows dropped."""
    seen: set[str] = set()
    dropped = 0
    for path in list_shards(dataset_dir):
        table = pq.read_table(path)
        keep = []
        for row, row_id in enumerate(table.column("id").to_pylist()):
            if row_id not in seen:
                seen.add(row_id)
                keep.append(row)
        if len(keep) == table.num_rows:
            continue
        dropped += table.num_rows - len(keep)
        if keep:
            write_atomic_table(table.take(keep), path)
        else:
            quarantine(path, dataset_dir)
    return dropped


def list_shards(dataset_dir) -> list[Path]:
    return sorted(shards_dir(dataset_dir).glob(SHARD_GLOB))


def read_dataset(dataset_dir, columns: list[str] | None = None) -> pa.Table:
    """All shards as one table (sorted by index): :func:`avatar3d.datagen.dataset.read_table`."""
    return read_table(dataset_dir, columns)


# --------------------------------------------------------------------------- dataset card


def build_card(dataset_dir, config: dict, model_ids: dict, timings: dict, num_planned: int) -> dict:
    """Counts per style / view / pose bin from the shards (images are not read)."""
    table = read_dataset(dataset_dir, columns=["id", "style", "view", "fine_bin", "coarse_bin", "width", "height"])
    ids = table.column("id").to_pylist()

    def counts(name):
        return dict(sorted(Counter(table.column(name).to_pylist()).items()))

    return {
        "format": f"avatar3d multi-view dataset v{FORMAT_VERSION}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_rows": table.num_rows,
        "num_unique_ids": len(set(ids)),
        "num_planned": num_planned,
        "complete": len(set(ids)) == num_planned and table.num_rows == num_planned,
        "num_shards": len(list_shards(dataset_dir)),
        "image_sizes": sorted({f"{w}x{h}" for w, h in zip(table.column("width").to_pylist(),
                                                            table.column("height").to_pylist())}),
        "counts": {
            "style": counts("style"),
            "view": counts("view"),
            "fine_bin": {str(k): v for k, v in counts("fine_bin").items()},
            "coarse_bin": {str(k): v for k, v in counts("coarse_bin").items()},
        },
        "model_ids": model_ids,
        "timings": timings,
        "config": config,
        "schema": {f.name: str(f.type) for f in ROW_SCHEMA},
    }


# --------------------------------------------------------------------------- EG3D export


@dataclass
class EG3DExport:
    out_dir: Path
    dataset_json: Path
    num_images: int


def eg3d_image_name(row_id: str) -> str:
    return f"img{row_id}.png"


def export_eg3d(dataset_dir, out_dir, overwrite: bool = False) -> EG3DExport:
    """Write EG3D's layout: PNGs plus ``dataset.json`` = ``{"labels": [[name, [25 floats]], ...]}``.

    The PNG bytes are copied as generated (no re-encoding). Shards are read one
    at a time, so memory stays at one shard. The folder is written whole
    (:func:`avatar3d.atomic.atomic_folder`): a folder that is not empty is
    refused unless ``overwrite``, which replaces it, so an earlier export's
    images never sit unlabelled beside a new ``dataset.json``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out_dir: {out} is a file; pass a folder for the export")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out_dir: {out} is not empty (an earlier export?); pass overwrite=True to replace "
                              "it, or another folder")
    labels = []
    with atomic_folder(out) as tmp:
        for path in list_shards(dataset_dir):
            table = pq.read_table(path, columns=["id", "index", "camera", "image_png"])
            for row_id, camera, png in zip(table.column("id").to_pylist(), table.column("camera").to_pylist(),
                                           table.column("image_png").to_pylist()):
                name = eg3d_image_name(row_id)
                (tmp / name).write_bytes(png)
                labels.append([name, [float(x) for x in camera]])
        labels.sort(key=lambda item: item[0])
        (tmp / "dataset.json").write_text(json.dumps({"labels": labels}, indent=2, ensure_ascii=False))
    return EG3DExport(out_dir=out, dataset_json=out / "dataset.json", num_images=len(labels))
