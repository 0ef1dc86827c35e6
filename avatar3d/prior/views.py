"""From one w per identity to renders: the bridge between the prior and the generator.

The prior works on one w (``w_dim``); the generator wants ws (N, num_ws,
w_dim), the same w broadcast to every layer as its mapping network does.
Renders are seeded per identity (the renderer jitters ray samples with the
global RNG, forked here): the same (w, seed, cameras) always gives the same
pixels, whatever else was rendered in the same batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatar3d.scene.cameras import camera_label
from avatar3d.gan.samples import to_uint8


@dataclass
class MappedLatents:
    """z mapped with the front camera: ``w`` (N, w_dim) is the first row of ``ws`` (N, num_ws, w_dim)."""

    z: torch.Tensor
    w: torch.Tensor
    ws: torch.Tensor


def front_cameras(n: int, device="cpu") -> torch.Tensor:
    return torch.tensor(camera_label(0.0, 0.0), dtype=torch.float32, device=device).expand(n, 25)


def seeded_z(G, seeds) -> torch.Tensor:
    """One z per seed, each from its own generator (independent of batch composition)."""
    return torch.cat([torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def map_front(G, z: torch.Tensor, truncation_psi: float = 1.0) -> MappedLatents:
    """z -> w with the front camera as the mapping's pose condition (identity-consistent, EG3D's habit)."""
    device = next(G.parameters()).device
    z = z.to(device)
    ws = G.mapping(z, front_cameras(len(z), device), truncation_psi=truncation_psi)
    return MappedLatents(z=z, w=ws[:, 0], ws=ws)


def broadcast_w(G, w: torch.Tensor) -> torch.Tensor:
    """(N, w_dim) -> (N, num_ws, w_dim)."""
    if w.ndim != 2 or w.shape[1] != G.w_dim:
        raise ValueError(f"w must have shape (N, {G.w_dim}), got {tuple(w.shape)}")
    return w[:, None, :].expand(-1, G.num_ws, -1)


@torch.no_grad()
def render_w(G, w: torch.Tensor, yaws, pitches=None, seeds=None) -> np.ndarray:
    """Render each identity w[i] from every (yaw, pitch) -> uint8 (N, V, H, W, 3).

    ``seeds[i]`` seeds identity i's ray jitter (default: i).
    """
    device = next(G.parameters()).device
    yaws = np.atleast_1d(np.asarray(yaws, dtype=np.float64))
    pitches = np.zeros_like(yaws) if pitches is None else np.broadcast_to(np.asarray(pitches, np.float64), yaws.shape)
    seeds = list(range(len(w))) if seeds is None else [int(s) for s in seeds]
    cams = torch.tensor(camera_label(yaws, pitches), dtype=torch.float32, device=device).reshape(-1, 25)
    ws = broadcast_w(G, w.to(device, torch.float32))
    planes = G.synthesize_planes(ws, noise_mode="const")
    out = []
    cuda = [device] if device.type == "cuda" else []
    for i in range(len(w)):
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seeds[i])
            v = len(cams)
            image = G.render(planes[i:i + 1].expand(v, *planes.shape[1:]), ws[i:i + 1].expand(v, *ws.shape[1:]),
                             cams).image
        out.append(to_uint8(image))
    return np.stack(out)
