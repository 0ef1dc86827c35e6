"""Parquet shards of the multi-view dataset: atomic writes, resume scan, card, EG3D export.

Layout of a dataset folder::

    <output_dir>/
      specs.parquet          every planned row (no pixels), written before generation
      job.json               what fixes the content of rows (seed, styles, models, ...)
      shards/part-<run>-<seq>.parquet   at most rows_per_file rows each
      dataset_card.json      counts per style / view / bin, config, model ids, timings
      quarantine/            shards resume could not read, moved aside (never deleted)
      .avatar3d.lock         held by the job writing the folder (avatar3d.lock)

Who writes a shard (``shard_writer``): the driver (:class:`ShardWriter` buffers the
painted rows it receives), or the painting actors (:func:`stage_shard`: each
writes its whole shard under a name the driver did not yet count, and the
driver, the folder's one committer, counts it with :meth:`ShardWriter.commit`:
a rename of ``.staged-<name>`` in a local folder, an entry in ``manifest.json``
on an object store). Their names are ``part-<run>-i<lowest index>.parquet``.
A staged shard nobody committed is debris the next resume removes (a folder)
or moves to ``quarantine/`` (an object store).

Crash safety: a shard is written under a temporary name (avatar3d.atomic) and
renamed with ``os.replace`` (atomic on POSIX), so a reader or a resumed job
never sees a half-written shard under its final name. Resume reads the ``id``
column of every shard, removes leftover temporaries of our own, moves shards
it cannot read (a full disk, an I/O error, someone else's file) to
``quarantine/`` and generates their rows again.

On an object store (``output_dir=s3://bucket/ds``, ``gs://...``; see
:class:`RemoteFolder`) there is no rename, so every file is one complete PUT
of bytes built in memory (the store shows an object only once its upload
completed), and ``manifest.json``, rewritten after each shard, names the
shards that count. Readers (:func:`avatar3d.datagen.dataset.dataset_files`)
and resume read the manifest; a shard a killed job uploaded but did not yet
name there is moved to ``quarantine/`` and its rows are painted again.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from avatar3d.datagen.dataset import (MANIFEST_FILE, SHARD_GLOB, SHARDS_DIR, dataset_files, is_remote,
                                      read_table, resolve_filesystem)
from avatar3d.datagen.schema import FORMAT_VERSION, ROW_SCHEMA
from avatar3d.atomic import TMP_MARK, atomic_folder, atomic_path, atomic_write

SPECS_FILE = "specs.parquet"
JOB_FILE = "job.json"
CARD_FILE = "dataset_card.json"
TMP_SUFFIX = ".tmp"
STAGED_PREFIX = ".staged-"  # a shard a worker wrote and the driver has not committed yet (local folders)


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
        self.remote = dataset_dir if isinstance(dataset_dir, RemoteFolder) else None
        if self.remote is None:
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
        self._committed: set[str] = set()  # names of worker-written shards counted by commit()

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

    def commit(self, name: str, rows: int, on_written=None) -> Path | str | None:
        """Count a shard a worker staged (:func:`stage_shard`): rename ``.staged-<name>`` to ``<name>``
        (local) or name it in ``manifest.json`` (object store) -> its path, or None for a name already
        counted. This writer is the one committer, so a shard a retried task staged twice is counted
        once, and one it never commits (its job was killed) is debris the next resume removes (local)
        or moves to ``quarantine/`` (object store)."""
        if name in self._committed:  # the same batch reported twice: counted once
            return None
        if self.remote is not None:
            if not self.remote.exists(SHARDS_DIR, name):  # a worker that wrote to another store
                raise FileNotFoundError(
                    f"shard {name} was written by a worker but is not in {self.remote.uri_of(SHARDS_DIR)}: with "
                    "shard_writer=workers, give the workers the driver's storage settings (AWS_* variables)")
            path = self.remote.commit_shard(name, rows)
        else:
            path, staged = self.dir / name, self.dir / (STAGED_PREFIX + name)
            if not staged.is_file():
                raise FileNotFoundError(
                    f"shard {name} was written by a worker but is not in {self.dir}: with shard_writer=workers, "
                    "pass an output_dir every node mounts (a shared file system) or an object-store URI")
            os.replace(staged, path)
        self._committed.add(name)
        self.written.append(path)
        self.rows_written += rows
        if on_written is not None:
            on_written(path, self.rows_written)
        return path

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
        name = f"part-{self.run_tag}-{self.seq:05d}.parquet"
        self.seq += 1
        # Not combine_chunks(): Parquet writes a chunked column as it is, and joining the chunks would copy
        # every PNG once more in the driver.
        table = head.replace_schema_metadata(self.schema.metadata)
        if self.remote is not None:  # one PUT, then the manifest names it
            path = self.remote.write_shard(table, name)
        else:
            path = write_atomic_table(table, self.dir / name)
        self.written.append(path)
        self.rows_written += head.num_rows
        return path


def staged_shard_name(run_tag: str, first_index: int) -> str:
    """A worker-written shard's name, fixed by its lowest index: a retried task writes the same name again."""
    return f"part-{run_tag}-i{first_index:09d}.parquet"


def stage_shard(dataset_dir: str, table: pa.Table, name: str) -> int:
    """Write a whole shard from a worker, not yet counted -> its bytes. Local: ``shards/.staged-<name>``
    (atomic, so a half file never carries the name); object store: ``shards/<name>`` in one PUT, which
    readers and resume ignore until the driver names it in the manifest."""
    if is_remote(dataset_dir):
        data = table_bytes(table)
        RemoteFolder(dataset_dir).put(data, SHARDS_DIR, name)
        return data.size
    folder = shards_dir(dataset_dir)
    if not folder.is_dir():  # the driver made it: a node that does not see it writes somewhere else
        raise FileNotFoundError(f"{folder} is not visible on this node: with shard_writer=workers, pass an "
                                "output_dir every node mounts (a shared file system) or an object-store URI")
    path = write_atomic_table(table, folder / (STAGED_PREFIX + name))
    return path.stat().st_size


@dataclass
class ResumeState:
    """What a dataset folder already holds."""

    done_ids: set[str] = field(default_factory=set)
    shards: list[Path] = field(default_factory=list)
    removed_tmp: list[Path] = field(default_factory=list)
    quarantined: list[tuple[Path, str]] = field(default_factory=list)  # (where it went, why)
    duplicate_ids: int = 0

    def add_shard(self, shard, path: str | Path, quarantine: Callable[[], object],
                  filesystem: pafs.FileSystem | None = None) -> bool:
        """Count the ids of the shard at ``path``; one that cannot be read goes through ``quarantine()`` (-> where
        it went), with the read error as the reason. -> whether it counted."""
        try:
            ids = pq.read_table(path, columns=["id"], filesystem=filesystem).column("id").to_pylist()
        except (pa.ArrowException, OSError) as exc:
            self.quarantined.append((quarantine(), str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            return False
        before = len(self.done_ids)
        self.done_ids.update(ids)
        self.duplicate_ids += len(ids) - (len(self.done_ids) - before)
        self.shards.append(shard)
        return True


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
    debris = {*folder.glob("*" + TMP_SUFFIX), *folder.glob(f".*{TMP_MARK}*"), *folder.glob(STAGED_PREFIX + "*")}
    for tmp in sorted(debris):
        state.removed_tmp.append(tmp)
        if clean:
            tmp.unlink(missing_ok=True)
    for path in sorted(folder.glob(SHARD_GLOB)):
        state.add_shard(path, path, lambda: quarantine(path, dataset_dir) if clean else path)
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


# --------------------------------------------------------------------------- object stores


def put_object(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Upload ``data`` as one object. Object stores have no rename and show an object only once its
    upload completed, so a kill leaves the old object or none, never a torn one."""
    stream = fs.open_output_stream(path)
    stream.write(data)
    stream.close()


def upload(local: str | Path, uri: str) -> str:
    """A local file, or every file of a local folder, -> one complete object each under ``uri`` -> ``uri``.
    Object stores have no rename: a folder's objects appear one by one, so a caller names the folder last."""
    fs, root = resolve_filesystem(uri)
    local = Path(local)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        put_object(fs, root if path == local else f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return uri


def table_bytes(table: pa.Table) -> pa.Buffer:
    """A Parquet file in memory (built whole before any byte is uploaded), as Arrow's buffer: not copied
    again into a Python ``bytes`` (a shard of 1,000 PNGs is ~0.4 GB)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue()


class RemoteFolder:
    """A dataset folder on an object store (``s3://bucket/ds``, ``gs://...``), written by one job.

    Every file is one complete PUT (:func:`put_object`); ``manifest.json`` is
    rewritten after each shard and names the shards that count, so a reader
    never counts a shard the writer had not finished with, and resume reads it.
    There is no lock on an object store: give each job its own prefix.
    """

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        self.fs, path = resolve_filesystem(self.uri)
        self.root = path.rstrip("/")
        self.entries: list[dict] = []  # the manifest: {"name", "rows"} per counted shard

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.File

    def put(self, data: bytes | pa.Buffer, *parts: str) -> str:
        put_object(self.fs, self.path(*parts), data)
        return self.uri_of(*parts)

    def get(self, *parts: str) -> bytes | None:
        if not self.exists(*parts):
            return None
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            return fh.read()

    def read_json(self, name: str):
        data = self.get(name)
        return None if data is None else json.loads(data)

    def write_json(self, data, name: str) -> str:
        return self.put(json.dumps(data, indent=2, ensure_ascii=False).encode(), name)

    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(self.path(name), filesystem=self.fs)

    def write_table(self, table: pa.Table, name: str) -> str:
        return self.put(table_bytes(table), name)

    def read_manifest(self) -> list[dict]:
        data = self.read_json(MANIFEST_FILE)
        return list(data.get("shards", [])) if data else []

    def write_manifest(self) -> str:
        return self.write_json({"format": "avatar3d shard manifest v1",
                                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "num_rows": sum(e["rows"] for e in self.entries), "shards": self.entries},
                               MANIFEST_FILE)

    def write_shard(self, table: pa.Table, name: str) -> str:
        """The shard (one PUT), then the manifest that counts it (one PUT) -> the shard's URI."""
        self.put(table_bytes(table), SHARDS_DIR, name)
        return self.commit_shard(name, table.num_rows)

    def commit_shard(self, name: str, rows: int) -> str:
        """Name an uploaded shard in the manifest (one PUT) -> the shard's URI."""
        self.entries.append({"name": name, "rows": rows})
        self.write_manifest()
        return self.uri_of(SHARDS_DIR, name)

    def shard_names(self) -> list[str]:
        """Every shard object under ``shards/``, counted or not."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(SHARDS_DIR), allow_not_found=True))
        prefix, suffix = SHARD_GLOB.split("*")
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                      and i.base_name.startswith(prefix) and i.base_name.endswith(suffix))

    def quarantine(self, name: str) -> str:
        """Copy a shard to ``quarantine/`` and delete it from ``shards/`` (no rename here) -> its new URI."""
        target = name
        if self.exists(QUARANTINE_DIR, target):
            target = f"{name.removesuffix('.parquet')}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.parquet"
        self.fs.copy_file(self.path(SHARDS_DIR, name), self.path(QUARANTINE_DIR, target))
        self.fs.delete_file(self.path(SHARDS_DIR, name))
        return self.uri_of(QUARANTINE_DIR, target)


def scan_remote_for_resume(folder: RemoteFolder, clean: bool = True) -> ResumeState:
    """Ids already written to an object-store dataset: the shards its manifest names. When ``clean``: a
    shard object the manifest does not name (uploaded by a job killed before it wrote the manifest) and
    a named one that cannot be read are moved to ``quarantine/``, and the manifest is rewritten."""
    state = ResumeState()
    entries = folder.read_manifest()
    present = set(folder.shard_names())
    named = {e["name"] for e in entries}
    for name in sorted(present - named):
        reason = f"not named in {MANIFEST_FILE} (its job was killed before counting it)"
        state.quarantined.append((folder.quarantine(name) if clean else folder.uri_of(SHARDS_DIR, name), reason))
    keep = []
    for entry in entries:
        name = entry["name"]
        if name not in present:
            state.quarantined.append((folder.uri_of(SHARDS_DIR, name), f"named in {MANIFEST_FILE} but missing"))
            continue
        uri = folder.uri_of(SHARDS_DIR, name)
        if state.add_shard(uri, folder.path(SHARDS_DIR, name), lambda: folder.quarantine(name) if clean else uri,
                           filesystem=folder.fs):
            keep.append(entry)
    folder.entries = keep
    if clean and keep != entries:
        folder.write_manifest()
    return state


# --------------------------------------------------------------------------- dataset card


def build_card(dataset_dir, config: dict, model_ids: dict, timings: dict, num_planned: int) -> dict:
    """Counts per style / view / pose bin from the shards (images are not read)."""
    if isinstance(dataset_dir, RemoteFolder):
        dataset_dir = dataset_dir.uri
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
        "num_shards": len(dataset_files(dataset_dir)[1]),
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
    fs, files = dataset_files(dataset_dir)  # a local folder or an object-store URI (its manifest's shards)
    with atomic_folder(out) as tmp:
        for path in files:
            table = pq.read_table(path, columns=["id", "index", "camera", "image_png"], filesystem=fs)
            for row_id, camera, png in zip(table.column("id").to_pylist(), table.column("camera").to_pylist(),
                                           table.column("image_png").to_pylist()):
                name = eg3d_image_name(row_id)
                (tmp / name).write_bytes(png)
                labels.append([name, [float(x) for x in camera]])
        labels.sort(key=lambda item: item[0])
        (tmp / "dataset.json").write_text(json.dumps({"labels": labels}, indent=2, ensure_ascii=False))
    return EG3DExport(out_dir=out, dataset_json=out / "dataset.json", num_images=len(labels))
