"""Training batches: rows of the multi-view dataset decoded, and mirrored with their labels.

The dataset is opened and checked on the driver by the one reader,
:func:`avatar3d.datagen.dataset.open_dataset` (before any worker starts: a wrong
path, an empty dataset or a wrong schema costs one line, not a cluster start-up);
the Ray side (``ray.data.read_parquet`` and the per-worker shards) lives in
:mod:`avatar3d.training.ray_fit`. Plain PyTorch here.

Decoding has two halves. :func:`decode_images` is deterministic and per row (PNG
bytes -> resized uint8 pixels): under Ray it runs in Ray Data's CPU tasks upstream
of the worker shards, so a training worker's CPU never decodes a PNG.
:func:`decode_batch` is the random half (mirroring, the label-shuffle control),
drawn from the batch's own rng on the worker; given rows that still hold PNG bytes
(a local loop, the tests) it runs :func:`decode_images` itself, with the same result.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatar3d.datagen.dataset import decode_png
from avatar3d.datagen.schema import CAMERA_DIM
from avatar3d.scene.cameras import flip_label


@dataclass
class TrainBatch:
    """A decoded batch: images in [-1, 1] and their (possibly mirrored) cameras."""

    images: torch.Tensor  # (N, 3, R, R) float32
    cameras: torch.Tensor  # (N, 25) float32


def decode_images(batch: dict, resolution: int) -> dict[str, np.ndarray]:
    """Rows with ``image_png`` and ``camera`` -> ``{"image": (N, R, R, 3) uint8, "camera": (N, 25) float64}``.

    The deterministic half of decoding (no randomness, row by row): PNG decode and
    Lanczos resize to ``resolution``. Pixels stay uint8 (4x smaller than float32
    in Ray's object store); :func:`decode_batch` scales them on the worker.
    """
    images = np.stack([decode_png(b, resolution) for b in batch["image_png"]])
    return {"image": images, "camera": _cameras(batch["camera"])}


def decode_batch(batch: dict, resolution: int, mirror: bool, rng: np.random.Generator,
                 shuffle_labels: bool = False) -> TrainBatch:
    """Rows (a dict of column arrays, as Ray Data's ``iter_batches`` gives) -> tensors.

    The rows hold either ``image_png`` (PNG bytes, decoded here) or ``image``
    (uint8 pixels already decoded by :func:`decode_images`, e.g. upstream in Ray
    Data), and ``camera``. With ``mirror``, each image is flipped left-right with
    probability 1/2 and its camera label mirrored with it (EG3D's x-flip
    augmentation). With ``shuffle_labels`` (a control experiment), the batch's
    camera labels are permuted among its images first, so no image keeps its own
    camera. Only these draw from ``rng``: both kinds of rows give the same batch.
    """
    if "image" in batch:
        images = np.asarray(batch["image"])
        if images.dtype != np.uint8 or images.shape[1:] != (resolution, resolution, 3):
            raise ValueError(f"decoded images are {images.dtype} {tuple(images.shape[1:])}, expected uint8 "
                             f"{(resolution, resolution, 3)} (decode_images at resolution {resolution})")
        cams = _cameras(batch["camera"])
    else:
        decoded = decode_images(batch, resolution)
        images, cams = decoded["image"], decoded["camera"]
    if shuffle_labels and len(cams) > 1:
        cams = cams[_derangement(rng, len(cams))]
    if mirror:
        flip = rng.random(len(images)) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)  # new: Ray's may be read-only
        cams[flip] = flip_label(cams[flip])
    if not images.flags.writeable:  # a zero-copy batch of Ray's (torch refuses to wrap read-only memory)
        images = images.copy()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TrainBatch(images=x, cameras=torch.from_numpy(cams).float())


def _cameras(column) -> np.ndarray:
    """A camera column (an (N, 25) array, or N lists as Parquet gives) -> (N, 25) float64, checked."""
    cams = np.stack([np.asarray(c, dtype=np.float64) for c in column])
    if cams.ndim != 2 or cams.shape[1] != CAMERA_DIM:
        raise ValueError(f"camera labels have {cams.shape[-1] if cams.ndim == 2 else cams.shape[1:]} values, "
                         f"expected {CAMERA_DIM}")
    return cams


def _derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (a random cyclic shift of a random order)."""
    order = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, int(rng.integers(1, n)))
    return out
