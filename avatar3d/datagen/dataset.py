"""The one reader of the multi-view dataset: training, FID, the report and the chain all read through here.

A dataset is named by a local folder or a filesystem URI (``s3://bucket/ds``,
``gs://...``, ``file:///...``); :mod:`pyarrow.fs` resolves the URI, as Ray Data
does, so remote storage needs no second reader. It accepts:

- a folder written by ``avatar3d generate`` (its ``shards/part-*.parquet``; on an
  object store the shards its ``manifest.json`` names, so a shard a killed
  writer uploaded but never counted is not read),
- a folder of ``*.parquet`` files, or a single Parquet file.

:func:`open_dataset` checks what a consumer needs before any work starts
(exists, not empty, the columns it reads, 25-float labels, a decodable first
image) and fails with one line naming ``field`` and what to pass instead::

    ds = open_dataset("outputs/demo/dataset", columns=TRAIN_COLUMNS, field="data.path")
    ds.summary()                       # "64 images in 4 shard(s), 64x64, at ..."
    table = ds.read(["view", "style"])   # one table, in row-index order
    for rows in ds.iter_batches(["image_png", "camera"], 64): ...
    ray.data.read_parquet(list(ds.files), filesystem=ds.filesystem)   # what Ray Train is fed

Plain pyarrow + PIL: no Ray, no torch.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from avatar3d.config import ConfigError
from avatar3d.datagen.schema import CAMERA_DIM, KNOWN_VERSIONS, ROW_SCHEMA, format_version

SHARDS_DIR = "shards"
SHARD_GLOB = "part-*.parquet"
# On an object store the writer names the shards that count here (rewritten after each one; see shards.py).
MANIFEST_FILE = "manifest.json"
# What the GAN trainer (and FID) read from each row.
TRAIN_COLUMNS = ("id", "image_png", "camera")


def resolve_filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """A local path or a filesystem URI -> (pyarrow filesystem, path inside it)."""
    text = str(uri)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise ValueError(f"{text}: not a filesystem URI pyarrow can open ({str(exc).splitlines()[0]}); "
                             "pass a local folder or an s3:// / gs:// / file:// URI") from None
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def is_remote(uri: str | Path) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def check_output_location(output_dir: str, tracking) -> bool:
    """A stage's ``output_dir``: -> whether it is on an object store (s3://, gs://) pyarrow can open. A
    ``file://`` or unknown scheme is one line (``Path()`` would make a local folder named ``file:``), and so
    is an object store with no MLflow store of its own (``tracking``: the stage's TrackingOptions), since the
    default sqlite file cannot live in a bucket."""
    if not is_remote(output_dir):
        if "://" in str(output_dir):
            raise ConfigError(f"output_dir={output_dir}: pass a local folder as a plain path, or an s3:// / "
                              "gs:// URI")
        return False
    try:
        resolve_filesystem(output_dir)
    except ValueError as err:
        raise ConfigError(f"output_dir: {err}") from None
    if tracking.enabled and not tracking.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(f"output_dir={output_dir} is on an object store, where no MLflow sqlite file can "
                          "live: pass tracking.tracking_uri=<MLflow server or sqlite:///local.db> (its artifacts "
                          "go where that store puts them) or tracking.enabled=false")
    return True


def _exists(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def _parquet_files(fs: pafs.FileSystem, folder: str, pattern: str) -> list[str]:
    selector = pafs.FileSelector(folder, recursive=False, allow_not_found=True)
    prefix, suffix = pattern.split("*")
    names = [info.path for info in fs.get_file_info(selector)
             if info.type == pafs.FileType.File and info.base_name.startswith(prefix)
             and info.base_name.endswith(suffix)]
    return sorted(names)


def dataset_files(uri: str | Path) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of a dataset (see the module docstring for the accepted layouts), sorted."""
    fs, path = resolve_filesystem(uri)
    kind = _exists(fs, path)
    if kind == pafs.FileType.File:
        return fs, [path]
    if kind != pafs.FileType.Directory:
        return fs, []
    shards = f"{path.rstrip('/')}/{SHARDS_DIR}"
    manifest = f"{path.rstrip('/')}/{MANIFEST_FILE}"
    if _exists(fs, manifest) == pafs.FileType.File:
        with fs.open_input_stream(manifest) as fh:
            entries = json.loads(fh.read()).get("shards", [])
        return fs, sorted(f"{shards}/{entry['name']}" for entry in entries)
    if _exists(fs, shards) == pafs.FileType.Directory:
        return fs, _parquet_files(fs, shards, SHARD_GLOB)
    return fs, _parquet_files(fs, path, "*.parquet")


@dataclass(frozen=True)
class Dataset:
    """An opened, checked dataset: its filesystem, its Parquet files and what they hold."""

    uri: str
    filesystem: pafs.FileSystem
    files: tuple[str, ...]
    num_rows: int
    image_size: tuple[int, int] | None  # (width, height) of the first image, when images were checked
    columns: tuple[str, ...]

    def summary(self) -> str:
        size = f", {self.image_size[0]}x{self.image_size[1]}" if self.image_size else ""
        return f"{self.num_rows} images in {len(self.files)} shard(s){size}, at {self.uri}"

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row as one table, in ``index`` order where the dataset has that column."""
        cols = list(columns) if columns is not None else None
        want_sort = "index" in self.columns and (cols is None or "index" not in cols)
        read_cols = cols + ["index"] if (cols is not None and want_sort) else cols
        table = pa.concat_tables([pq.read_table(f, columns=read_cols, filesystem=self.filesystem)
                                  for f in self.files])
        if "index" in table.column_names:
            table = table.sort_by("index")
        return table.select(cols) if cols is not None else table

    def iter_batches(self, columns: Sequence[str], batch_size: int = 64) -> Iterator[dict[str, list]]:
        """Rows in file order, ``batch_size`` at a time, as dicts of column lists (memory: one batch)."""
        for f in self.files:
            with self.filesystem.open_input_file(f) as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=list(columns)):
                    yield batch.to_pydict()

    def fingerprint(self) -> str:
        """Content hash: each file's name and byte size and the ``id`` column, in file order.
        Copies of a dataset share it (no mtimes); an added, removed or rewritten shard changes it."""
        h = hashlib.sha256()
        for f, info in zip(self.files, self.filesystem.get_file_info(list(self.files))):
            h.update(f"{Path(f).name}\0{info.size}\0".encode())
            ids = pq.read_table(f, columns=["id"], filesystem=self.filesystem).column("id").to_pylist()
            for value in ids:
                h.update(f"{value}\n".encode())
        return h.hexdigest()[:16]


def open_dataset(uri: str | Path | None, columns: Sequence[str] = TRAIN_COLUMNS, field: str = "data.path",
                 check_images: bool = True) -> Dataset:
    """Open and check a dataset for a reader of ``columns``; every problem is one line naming ``field``."""
    if not uri or not str(uri).strip():
        raise ValueError(f"{field}: no dataset given; pass {field}=<folder written by avatar3d generate>")
    fs, path = resolve_filesystem(uri)
    if _exists(fs, path) == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{field}: {uri} does not exist; pass a folder written by avatar3d generate")
    fs, files = dataset_files(uri)
    if not files:
        raise ValueError(f"{field}: no Parquet shards in {uri}; run avatar3d generate first or pass its output_dir")
    num_rows, names = 0, None
    for f in files:
        try:
            with fs.open_input_file(f) as fh:
                meta = pq.read_metadata(fh)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise ValueError(f"{field}: shard {Path(f).name} is not readable Parquet ({str(exc).splitlines()[0]}); "
                             "move it away and re-run avatar3d generate, which regenerates missing rows") from None
        schema = meta.schema.to_arrow_schema()
        version = format_version(schema)
        if version not in KNOWN_VERSIONS:
            raise ValueError(f"{field}: shard {Path(f).name} is dataset format v{version}, this avatar3d reads "
                             f"v{', v'.join(map(str, KNOWN_VERSIONS))}; upgrade avatar3d or regenerate the dataset")
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"{field}: shard {Path(f).name} lacks column(s) {', '.join(missing)}; "
                             f"this reader needs {', '.join(columns)}")
        names = names or tuple(schema.names)
        num_rows += meta.num_rows
    if num_rows == 0:
        raise ValueError(f"{field}: the dataset at {uri} has no rows; generate some images first")
    size = None
    if check_images and "camera" in columns and "image_png" in columns:
        first = next(_first_rows(fs, files, ["camera", "image_png"]))
        if len(first["camera"]) != CAMERA_DIM:
            raise ValueError(f"{field}: camera labels have {len(first['camera'])} values, expected {CAMERA_DIM} "
                             "(EG3D's 16 cam2world + 9 intrinsics)")
        try:
            size = Image.open(io.BytesIO(first["image_png"])).size
        except Exception:
            raise ValueError(f"{field}: the first image in {Path(files[0]).name} does not decode as PNG") from None
    return Dataset(uri=str(uri), filesystem=fs, files=tuple(files), num_rows=num_rows, image_size=size,
                   columns=names or ())


def _first_rows(fs: pafs.FileSystem, files: list[str], columns: list[str]) -> Iterator[dict]:
    for f in files:
        with fs.open_input_file(f) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=1, columns=columns):
                if batch.num_rows:
                    yield batch.slice(0, 1).to_pylist()[0]
                    return


def read_table(uri: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of a dataset as one table; an empty table with the row schema when it has no shards."""
    _, files = dataset_files(uri)
    if not files:
        empty = ROW_SCHEMA.empty_table()
        return empty if columns is None else empty.select(list(columns))
    return open_dataset(uri, columns=tuple(columns or ()), field="dataset", check_images=False).read(columns)


def decode_png(data: bytes, resolution: int | None = None, where: str = "") -> np.ndarray:
    """PNG bytes -> HWC uint8 RGB, resized to ``resolution`` (Lanczos, as the trainer does) if given.
    Bytes that are not an image raise one ValueError naming ``where`` (e.g. the row's id)."""
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except (OSError, SyntaxError) as exc:  # PIL: UnidentifiedImageError (an OSError), truncated data
        raise ValueError(f"{where or 'image'}: not a readable image ({str(exc).splitlines()[0]}); "
                         "regenerate that row (move its shard to quarantine/ and re-run avatar3d generate)") from None
    if resolution is not None and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img)


def encode_png(image: np.ndarray) -> bytes:
    """HWC uint8 RGB -> lossless PNG with fixed settings (same pixels -> same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
