"""Training data: the multi-view Parquet dataset, checked, decoded and mirrored.

Plain PyTorch / pyarrow here; the Ray side (``ray.data.read_parquet`` and the
per-worker shards) lives in :mod:`avatar3d.training.job`. Checking happens on
the driver before any worker starts, so a wrong path, an empty dataset or a
wrong schema costs one line, not a cluster start-up.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from avatar3d.datagen.schema import CAMERA_DIM
from avatar3d.datagen.shards import SHARD_GLOB, shards_dir
from avatar3d.scene.cameras import flip_label

# What the trainer reads from each row.
TRAIN_COLUMNS = ["id", "image_png", "camera"]


@dataclass
class DatasetInfo:
    """What :func:`check_dataset` found."""

    path: Path
    files: list[Path]
    num_rows: int
    image_size: tuple[int, int]  # (width, height) of the first image

    def summary(self) -> str:
        return (f"{self.num_rows} images in {len(self.files)} shard(s), "
                f"{self.image_size[0]}x{self.image_size[1]}, at {self.path}")


def dataset_files(path: str | Path) -> list[Path]:
    """Parquet shards of a dataset folder (``<dir>/shards/part-*.parquet``) or of a plain folder / file."""
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / "shards").is_dir():
        return sorted(shards_dir(p).glob(SHARD_GLOB))
    return sorted(p.glob("*.parquet"))


def check_dataset(path: str | Path | None) -> DatasetInfo:
    """Validate a dataset before training: exists, not empty, right schema and label size."""
    if not path:
        raise ValueError("data.path: no dataset given; pass data.path=<folder written by avatar3d generate>")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data.path: {p} does not exist; pass a folder written by avatar3d generate")
    files = dataset_files(p)
    if not files:
        raise ValueError(f"data.path: no Parquet shards in {p}; run avatar3d generate first or pass its output_dir")
    num_rows = 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise ValueError(f"data.path: shard {f.name} is not readable Parquet ({exc}); remove it and re-run "
                             "avatar3d generate, which regenerates missing rows") from None
        schema = meta.schema.to_arrow_schema()
        missing = [c for c in TRAIN_COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(f"data.path: shard {f.name} lacks column(s) {', '.join(missing)}; "
                             f"a training dataset needs {', '.join(TRAIN_COLUMNS)}")
        num_rows += meta.num_rows
    if num_rows == 0:
        raise ValueError(f"data.path: the dataset at {p} has no rows; generate some images first")
    first = pq.ParquetFile(files[0]).read_row_group(0, columns=["camera", "image_png"]).slice(0, 1).to_pylist()[0]
    if len(first["camera"]) != CAMERA_DIM:
        raise ValueError(f"data.path: camera labels have {len(first['camera'])} values, expected {CAMERA_DIM} "
                         "(EG3D's 16 cam2world + 9 intrinsics)")
    try:
        size = Image.open(io.BytesIO(first["image_png"])).size
    except Exception:
        raise ValueError(f"data.path: the first image in {files[0].name} does not decode as PNG") from None
    return DatasetInfo(path=p, files=files, num_rows=num_rows, image_size=size)


@dataclass
class TrainBatch:
    """A decoded batch: images in [-1, 1] and their (possibly mirrored) cameras."""

    images: torch.Tensor  # (N, 3, R, R) float32
    cameras: torch.Tensor  # (N, 25) float32


def decode_png(data: bytes, resolution: int) -> np.ndarray:
    """PNG bytes -> HWC uint8 RGB at ``resolution`` (Lanczos if resized)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img)


def decode_batch(batch: dict, resolution: int, mirror: bool, rng: np.random.Generator) -> TrainBatch:
    """Rows (a dict of column arrays, as Ray Data's ``iter_batches`` gives) -> tensors.

    With ``mirror``, each image is flipped left-right with probability 1/2 and
    its camera label mirrored with it (EG3D's x-flip augmentation).
    """
    images = np.stack([decode_png(b, resolution) for b in batch["image_png"]])
    cams = np.stack([np.asarray(c, dtype=np.float64) for c in batch["camera"]])
    if cams.shape[1] != CAMERA_DIM:
        raise ValueError(f"camera labels have {cams.shape[1]} values, expected {CAMERA_DIM}")
    if mirror:
        flip = rng.random(len(images)) < 0.5
        images[flip] = images[flip][:, :, ::-1, :]
        cams[flip] = flip_label(cams[flip])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TrainBatch(images=x, cameras=torch.from_numpy(cams).float())
