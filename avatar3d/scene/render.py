"""Depth and normal maps of a head mesh for one camera label, by CPU ray casting (docs/method.md section 2).

One ray per pixel centre, the same rays as ``avatar3d.scene.cameras.camera_rays``
(row-major from the top row, through (i + 0.5) / size), traced headless with
trimesh's embree intersector (``HeadModel.cast``): no GL context needed.

Outputs and their conventions:

* ``depth``: float32 (H, W), metric z-depth = distance along the camera's
  viewing axis (not along the ray), in world units; background = +inf.
* :func:`depth_to_image`: the ControlNet depth control image
  (lllyasviel/sd-controlnet-depth, control_v11f1p_sd15_depth were trained on
  MiDaS output, i.e. relative inverse depth): disparity 1/z of the foreground
  is min-max normalised per image onto [floor, 1] (nearest point white, the
  farthest surface point ``floor`` grey so it stays apart from the
  background) and the background is black; 8-bit, 3 equal channels.
* ``normal``: float32 (H, W, 3) unit outward normals in the OpenCV camera
  frame (x right, y down, z forward = away from the camera); zeros on the
  background.
* :func:`normal_to_image`: the colour convention of lllyasviel/sd-controlnet-normal
  (ControlNet 1.0, its model card's "normal from MiDaS" recipe):
  R = component pointing image-left, G = pointing image-up, B = pointing at
  the viewer, each mapped from [-1, 1] to [0, 255]; a surface facing the
  camera is (128, 128, 255). The background is black, a colour no unit
  normal maps to. (ControlNet 1.1's normalbae model expects the ScanNet/BAE
  protocol instead; convert before using it with that model.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from avatar3d.scene.cameras import split_label


def check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int (pixels per side), got {size!r}")
    return int(size)


@dataclass(frozen=True)
class PixelRays:
    origins: np.ndarray  # (S*S, 3) world
    directions: np.ndarray  # (S*S, 3) unit, world
    forward: np.ndarray  # (3,) camera viewing axis (cam2world column 2)
    size: int


def pixel_rays(label, size: int) -> PixelRays:
    """Rays through pixel centres, row-major from the top row: numpy twin of ``cameras.camera_rays``."""
    size = check_size(size)
    c2w, k = split_label(label)
    if c2w.ndim != 2:
        raise ValueError(f"label must be one camera of 25 floats, got shape {np.shape(label)}")
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    v, u = np.meshgrid(centres, centres, indexing="ij")  # v: rows (down), u: columns (right)
    x = (u.reshape(-1) - k[0, 2]) / k[0, 0]
    y = (v.reshape(-1) - k[1, 2]) / k[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], axis=-1)
    d_world = d_cam @ c2w[:3, :3].T
    d_world /= np.linalg.norm(d_world, axis=-1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], d_world.shape)
    return PixelRays(origins=origins, directions=d_world, forward=c2w[:3, 2].copy(), size=size)


@dataclass(frozen=True)
class MeshRender:
    """Per-pixel ray-cast of the head for one camera."""

    depth: np.ndarray  # (S, S) float32 camera z-depth, +inf on the background
    normal: np.ndarray  # (S, S, 3) float32 unit normals, OpenCV camera frame; 0 on the background

    @property
    def mask(self) -> np.ndarray:
        return np.isfinite(self.depth)


def render_mesh(head, label, size: int) -> MeshRender:
    """Depth and camera-space normals of ``head`` (a ``HeadModel``) seen by ``label`` at size x size."""
    rays = pixel_rays(label, size)
    hits = head.cast(rays.origins, rays.directions)
    z = hits.distance * (rays.directions @ rays.forward)  # along-ray distance -> camera z
    depth = np.where(hits.hit, z, np.inf).astype(np.float32).reshape(rays.size, rays.size)
    c2w, _ = split_label(label)
    n_cam = np.where(hits.hit[:, None], hits.normal, 0.0) @ c2w[:3, :3]  # world -> camera: R^T n, row form
    normal = n_cam.astype(np.float32).reshape(rays.size, rays.size, 3)
    return MeshRender(depth=depth, normal=normal)


def depth_to_image(depth: np.ndarray, floor: float = 0.2):
    """Metric z-depth (inf = background) -> MiDaS-style 8-bit RGB control image: near bright, background black."""
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}; it is the grey level of the farthest surface point")
    depth = np.asarray(depth, dtype=np.float64)
    fg = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape, dtype=np.float64)
    if fg.any():
        disparity = 1.0 / depth[fg]
        lo, hi = disparity.min(), disparity.max()
        scaled = (disparity - lo) / (hi - lo) if hi > lo else np.ones_like(disparity)
        out[fg] = floor + (1.0 - floor) * scaled
    gray = np.round(out * 255.0).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))


def normal_to_image(normal: np.ndarray, mask: np.ndarray | None = None):
    """OpenCV camera-frame normals (S, S, 3) -> RGB image in sd-controlnet-normal colours, black background."""
    normal = np.asarray(normal, dtype=np.float64)
    if mask is None:
        mask = np.linalg.norm(normal, axis=-1) > 0.5
    # (left, up, toward the viewer) = (-x, -y, -z) in OpenCV camera axes.
    colour = np.stack([-normal[..., 0], -normal[..., 1], -normal[..., 2]], axis=-1)
    rgb = np.round((colour * 0.5 + 0.5).clip(0.0, 1.0) * 255.0).astype(np.uint8)
    rgb[~mask] = 0
    return Image.fromarray(rgb)
