"""Sample grids per view group (front / side / back) for tracking progress.

Fixed latents (seeded) so grids are comparable across ticks; every avatar is
mapped with the front camera as its conditioning pose (EG3D's habit), so one
row shows one identity from several yaws.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from avatar3d.scene.cameras import camera_label

GROUP_YAWS = {"front": (-30.0, 0.0, 30.0), "side": (-90.0, -60.0, 60.0, 90.0), "back": (150.0, 180.0, -150.0)}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = (images.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(tiles: np.ndarray, rows: int, cols: int) -> Image.Image:
    """(rows*cols, H, W, 3) uint8, row-major -> one PIL image."""
    n, h, w, c = tiles.shape
    if n != rows * cols:
        raise ValueError(f"image_grid: {n} tiles do not fill {rows}x{cols}")
    grid = tiles.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
    return Image.fromarray(grid)


def sample_grids(G, cfg, device="cpu", num_identities: int = 4, seed: int = 0,
                 truncation_psi: float = 0.7) -> dict[str, Image.Image]:
    """{view group: grid image (identities x yaws)} rendered by ``G`` (usually the EMA copy).

    The global RNG (ray jitter draws from it) is forked: drawing grids leaves
    training's random streams untouched, so a resumed run stays bit-exact.
    """
    cuda = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        return _sample_grids(G, cfg, device, num_identities, seed, truncation_psi)


def _sample_grids(G, cfg, device, num_identities, seed, truncation_psi) -> dict[str, Image.Image]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_identities, cfg.z_dim, generator=gen).to(device)
    front = torch.tensor(camera_label(0.0, 0.0), dtype=torch.float32, device=device).expand(num_identities, 25)
    ws = G.mapping(z, front, truncation_psi=truncation_psi)
    planes = G.synthesize_planes(ws, noise_mode="const")
    grids = {}
    for group, yaws in GROUP_YAWS.items():
        tiles = []
        for i in range(num_identities):
            cams = torch.tensor(camera_label(np.asarray(yaws), np.zeros(len(yaws))), dtype=torch.float32,
                                device=device)
            out = G.render(planes[i:i + 1].expand(len(yaws), *planes.shape[1:]),
                           ws[i:i + 1].expand(len(yaws), *ws.shape[1:]), cams)
            tiles.append(to_uint8(out.image))
        grids[group] = image_grid(np.concatenate(tiles), num_identities, len(yaws))
    return grids
