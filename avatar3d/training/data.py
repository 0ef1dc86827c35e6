"""Training batches: rows of the multi-view dataset decoded, and mirrored with their labels.

The dataset is opened and checked on the driver by the one reader,
:func:`avatar3d.datagen.dataset.open_dataset` (before any worker starts: a wrong
path, an empty dataset or a wrong schema costs one line, not a cluster start-up);
the Ray side (``ray.data.read_parquet`` and the per-worker shards) lives in
:mod:`avatar3d.training.ray_fit`. Plain PyTorch here.
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


def decode_batch(batch: dict, resolution: int, mirror: bool, rng: np.random.Generator,
                 shuffle_labels: bool = False) -> TrainBatch:
    """Rows (a dict of column arrays, as Ray Data's ``iter_batches`` gives) -> tensors.

    With ``mirror``, each image is flipped left-right with probability 1/2 and
    its camera label mirrored with it (EG3D's x-flip augmentation). With
    ``shuffle_labels`` (a control experiment), the batch's camera labels are
    permuted among its images first, so no image keeps its own camera.
    """
    images = np.stack([decode_png(b, resolution) for b in batch["image_png"]])
    cams = np.stack([np.asarray(c, dtype=np.float64) for c in batch["camera"]])
    if cams.shape[1] != CAMERA_DIM:
        raise ValueError(f"camera labels have {cams.shape[1]} values, expected {CAMERA_DIM}")
    if shuffle_labels and len(cams) > 1:
        cams = cams[_derangement(rng, len(cams))]
    if mirror:
        flip = rng.random(len(images)) < 0.5
        images[flip] = images[flip][:, :, ::-1, :]
        cams[flip] = flip_label(cams[flip])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TrainBatch(images=x, cameras=torch.from_numpy(cams).float())


def _derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (a random cyclic shift of a random order)."""
    order = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, int(rng.integers(1, n)))
    return out
