"""The generator's inference snapshot: the format every consumer of a trained GAN reads.

One safetensors file holding the EMA generator's weights; its metadata holds
the format tag, the GAN config (JSON) and the training progress. Loading needs
torch + safetensors only: no Ray, no DeepSpeed, no pickle. It is kept apart
from the training run's resume state (engines, optimisers, RNG streams; see
:mod:`avatar3d.training.loop`), as in NVlabs' code (``--resume`` vs
``--transfer``). The file is written under a temporary name, fsynced and
renamed into place, so a crash never leaves a half-written snapshot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from avatar3d.atomic import atomic_path
from avatar3d.gan.config import GANConfig
from avatar3d.gan.generator import TriPlaneGenerator
from avatar3d.safeio import check_format, unshared


SNAPSHOT_FORMAT = "avatar3d.gan-snapshot/1"


# -- snapshots --------------------------------------------------------------------

@dataclass
class Snapshot:
    """A loaded inference snapshot: the EMA generator and what it was trained on."""

    generator: torch.nn.Module
    gan_config: dict[str, Any]
    info: dict[str, Any]


def save_snapshot(path: str | Path, G_ema: torch.nn.Module, gan_config: dict[str, Any],
                  info: dict[str, Any] | None = None) -> Path:
    """Write ``G_ema``'s weights + config to one safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = unshared(G_ema.state_dict())
    metadata = {
        "format": SNAPSHOT_FORMAT,
        "gan_config": json.dumps(gan_config),
        "info": json.dumps(info or {}),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_snapshot_metadata(path: str | Path) -> dict[str, Any]:
    """The format-checked metadata of a snapshot: {"gan_config": {...}, "info": {...}}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"snapshot not found: {path} (pass a .safetensors file written by avatar3d train-gan)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except SafetensorError as exc:  # text, pickle, a truncated header: not a snapshot
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); pass a .safetensors snapshot "
                         "written by avatar3d train-gan") from None
    found = meta.get("format")
    if str(found).rpartition("/")[0] != SNAPSHOT_FORMAT.rpartition("/")[0]:
        raise ValueError(f"{path} is not an avatar3d generator snapshot (format {found!r}, "
                         f"expected {SNAPSHOT_FORMAT!r})")
    check_format(path, found, SNAPSHOT_FORMAT, "load it with the avatar3d release that wrote it")
    return {"gan_config": json.loads(meta["gan_config"]), "info": json.loads(meta.get("info", "{}"))}


def load_snapshot(path: str | Path, device: str | torch.device = "cpu") -> Snapshot:
    """Rebuild the generator from a snapshot; plain PyTorch, no Ray or DeepSpeed."""
    meta = read_snapshot_metadata(path)
    cfg = GANConfig.from_dict(meta["gan_config"])
    G = TriPlaneGenerator(cfg)
    try:
        state = load_file(str(path), device="cpu")
    except SafetensorError as exc:  # a valid header over missing or cut-off tensor data
        raise ValueError(f"{path}: the snapshot's weights cannot be read ({exc}); the file is damaged or "
                         "was cut short, copy it again") from None
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the snapshot's own GAN config "
                         f"({str(exc).splitlines()[0]}); the file was altered after it was written") from None
    G.neural_rendering_resolution = meta["info"].get("neural_rendering_resolution", G.neural_rendering_resolution)
    return Snapshot(generator=G.to(device).eval().requires_grad_(False), gan_config=meta["gan_config"],
                    info=meta["info"])
