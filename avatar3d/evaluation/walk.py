"""Latent walks and turntables: what a person looks at to judge a 3D GAN (docs/method.md section 7).

- **Latent walk**: identities morph by linear interpolation in w (StyleGAN's
  habit: w space is the disentangled one, lerp there stays on the
  manifold far better than in z) while the camera swings left and right.
  Outputs a grid (row i: seed i -> seed i+1, the camera sweeping across the
  columns) and a looping video through all seeds.
- **Turntable**: one identity, the camera orbiting 360 degrees at a fixed
  elevation, the plain test of 3D consistency (no flicker, no second face).

Every identity is mapped with the front camera as its conditioning pose, so
moving the camera moves the camera only. Renders are deterministic: constant
synthesis noise and seeded ray jitter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image

from avatar3d.atomic import atomic_path
from avatar3d.evaluation.mesh import seed_latent
from avatar3d.gan.samples import image_grid, to_uint8
from avatar3d.scene.cameras import camera_label

VIDEO_FORMATS = (".gif", ".mp4")


@dataclass
class WalkOutputs:
    frames: np.ndarray          # (T, H, W, 3) uint8
    grid: np.ndarray | None     # (rows*H, cols*W, 3) uint8, walks only
    files: list[Path]


def seeds_to_ws(G, seeds, truncation_psi: float = 0.7) -> torch.Tensor:
    """(len(seeds), num_ws, w_dim): one identity per seed, front-camera conditioned."""
    return torch.cat([seed_latent(G, s, truncation_psi) for s in seeds])


@torch.no_grad()
def render_frames(G, ws: torch.Tensor, yaws, pitches, seed: int = 0) -> np.ndarray:
    """Render ws[i] from camera (yaws[i], pitches[i]) -> (N, H, W, 3) uint8.

    One frame at a time with the ray jitter re-seeded for each: a frame is the
    same whatever else is rendered with it, and the jitter pattern does not
    change between frames, so videos do not shimmer.
    """
    device = next(G.parameters()).device
    cams = torch.tensor(camera_label(np.asarray(yaws, dtype=np.float64), np.asarray(pitches, dtype=np.float64)),
                        dtype=torch.float32, device=device).reshape(-1, 25)
    if len(cams) != len(ws):
        raise ValueError(f"render_frames: {len(ws)} latents but {len(cams)} cameras")
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(len(ws)):
            torch.manual_seed(seed)
            out.append(to_uint8(G.synthesis(ws[i:i + 1], cams[i:i + 1], noise_mode="const").image))
    return np.concatenate(out)


def camera_swing(t: np.ndarray, yaw_amplitude: float, pitch_amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """t in [0, 1) -> (yaw, pitch): one full left-right swing with a gentle nod, a closed loop."""
    return yaw_amplitude * np.sin(2 * math.pi * t), pitch_amplitude * np.sin(4 * math.pi * t)


def latent_walk(G, seeds, frames_per_seed: int = 24, grid_columns: int = 7, yaw_amplitude: float = 60.0,
                pitch_amplitude: float = 10.0, truncation_psi: float = 0.7) -> WalkOutputs:
    """Walk through ``seeds`` (and back to the first) in w while the camera swings."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"--seeds: a walk needs at least 2 seeds, got {seeds}")
    if frames_per_seed < 1 or grid_columns < 2:
        raise ValueError("frames_per_seed must be >= 1 and grid_columns >= 2")
    ws = seeds_to_ws(G, seeds + seeds[:1], truncation_psi)
    # Video: a closed loop seed0 -> seed1 -> ... -> seed0, camera swinging once per segment.
    frames_ws, yaws, pitches = [], [], []
    for i in range(len(seeds)):
        a = torch.arange(frames_per_seed, dtype=torch.float32) / frames_per_seed
        frames_ws.append(torch.lerp(ws[i:i + 1], ws[i + 1:i + 2], a[:, None, None].to(ws.device)))
        y, p = camera_swing(a.numpy(), yaw_amplitude, pitch_amplitude)
        yaws.append(y)
        pitches.append(p)
    frames = render_frames(G, torch.cat(frames_ws), np.concatenate(yaws), np.concatenate(pitches))
    # Grid: row i walks seed i -> seed i+1 across the columns while the yaw sweeps -amp..+amp.
    rows = len(seeds) - 1
    a = torch.linspace(0, 1, grid_columns, device=ws.device)
    grid_ws = torch.cat([torch.lerp(ws[i:i + 1], ws[i + 1:i + 2], a[:, None, None]) for i in range(rows)])
    grid_yaw = np.tile(np.linspace(-yaw_amplitude, yaw_amplitude, grid_columns), rows)
    tiles = render_frames(G, grid_ws, grid_yaw, np.zeros_like(grid_yaw))
    return WalkOutputs(frames=frames, grid=tile_grid(tiles, rows, grid_columns), files=[])


def turntable(G, seed: int, frames: int = 36, pitch: float = 0.0, truncation_psi: float = 0.7) -> WalkOutputs:
    """One identity, the camera orbiting once (yaw 0 -> 360, the front first)."""
    if frames < 2:
        raise ValueError(f"--frames: {frames} is too few for a turntable; pass at least 2")
    ws = seeds_to_ws(G, [seed], truncation_psi).expand(frames, -1, -1)
    yaws = np.arange(frames) * 360.0 / frames
    images = render_frames(G, ws, yaws, np.full(frames, pitch))
    cols = min(frames, 8)
    rows = math.ceil(frames / cols)
    pad = np.zeros((rows * cols - frames,) + images.shape[1:], np.uint8)
    return WalkOutputs(frames=images, grid=tile_grid(np.concatenate([images, pad]), rows, cols), files=[])


def tile_grid(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.asarray(image_grid(tiles, rows, cols))


def write_video(frames: np.ndarray, path: str | Path, fps: int = 24) -> Path:
    """GIF (Pillow, loops forever) or MP4 (H.264 through the ffmpeg binary imageio-ffmpeg ships; no download)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"{path.name}: video format {suffix!r} is not supported; pass a .gif or .mp4 file name")
    if suffix == ".mp4" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise ValueError(f"MP4 (yuv420p) needs even frame sizes, got {frames.shape[2]}x{frames.shape[1]}")
    with atomic_path(path, suffix) as tmp:  # an earlier video stays whole until the new one is
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            # macro_block_size=1: keep the frame size (imageio would otherwise rescale to multiples of 16);
            # imageio-ffmpeg writes yuv420p, which every player reads.
            iio.imwrite(tmp, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    return path


def save_outputs(result: WalkOutputs, out_dir: str | Path, stem: str, formats=(".gif", ".mp4"),
                 fps: int = 24) -> WalkOutputs:
    """Write ``<stem>_grid.png`` and ``<stem>.<gif|mp4>`` into ``out_dir``."""
    out = Path(out_dir)
    files = []
    if result.grid is not None:
        with atomic_path(out / f"{stem}_grid.png", ".png") as tmp:
            Image.fromarray(result.grid).save(tmp)
        files.append(out / f"{stem}_grid.png")
    for fmt in formats:
        files.append(write_video(result.frames, out / f"{stem}{fmt}", fps))
    result.files = files
    return result
