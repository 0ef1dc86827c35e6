"""Meshes from the generator's density field (docs/method.md section 7).

    field on an N^3 grid in the box (chunked queries)
      -> marching cubes (PyMCubes) at an iso level
      -> world coordinates, outward winding
      -> vertex colours from the decoder -> PLY / OBJ / GLB (trimesh)

Conventions of the exported mesh: world units of the generator (the
tri-plane box is [-box_warp/2, box_warp/2]^3, 1 unit = box_warp = 1 by
default), y up, the subject facing +z (glTF's own frame, so a GLB viewer
shows the face from its default camera), counter-clockwise faces seen from
outside (positive volume). The grid is padded with one layer of "outside",
so a surface that reaches the box still closes: every mesh is watertight.

Iso level: the field is the decoder's raw density ``sigma``; the renderer
uses ``softplus(sigma - 1)``. EG3D extracts shapes at ``sigma = 10`` at
high resolution (its gen_samples.py), where that density is ~9: opaque
enough to be the visible surface. Lower it for soft, young generators
(``sigma_range`` in the error message helps choose).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mcubes
import numpy as np
import torch
import trimesh

from avatar3d.atomic import atomic_write
from avatar3d.evaluation.options import EG3D_ISO_SIGMA  # noqa: F401  (re-exported)
from avatar3d.scene.cameras import camera_label
from avatar3d.scene.render import pixel_rays

MESH_FORMATS = ("glb", "ply", "obj")


@dataclass
class ExtractedMesh:
    vertices: np.ndarray  # (V, 3) float64 world coordinates
    faces: np.ndarray     # (F, 3) int64, counter-clockwise from outside
    colors: np.ndarray | None = None  # (V, 4) uint8 RGBA
    iso: float = 0.0
    resolution: int = 0

    def to_trimesh(self):
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=self.colors, process=False)


def sample_grid(field: Callable[[np.ndarray], np.ndarray], resolution: int, half_extent: float,
                chunk: int = 1 << 16) -> np.ndarray:
    """Field values on a ``resolution``^3 grid spanning [-h, h]^3, as volume[ix, iy, iz] (chunked queries)."""
    if resolution < 4:
        raise ValueError(f"resolution: {resolution} is too coarse; pass at least 4 (EG3D uses 512)")
    axis = np.linspace(-half_extent, half_extent, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    values = np.empty(len(grid), dtype=np.float32)
    for i in range(0, len(grid), chunk):
        values[i:i + chunk] = np.asarray(field(grid[i:i + chunk]), dtype=np.float32).reshape(-1)
    return values.reshape(resolution, resolution, resolution)


def marching_cubes(volume: np.ndarray, iso: float, half_extent: float) -> ExtractedMesh:
    """Surface ``volume == iso`` (inside = above iso) in world coordinates, closed and outward-facing."""
    lo, hi = float(volume.min()), float(volume.max())
    if not hi > iso:  # nothing inside (all inside is fine: the padding closes the box)
        raise ValueError(f"iso: no surface at level {iso:g}, the field spans [{lo:.3g}, {hi:.3g}]; "
                         "pass an iso level inside that range")
    n = volume.shape[0]
    # One layer of "outside" around the grid closes surfaces that reach the box. Far below the iso level,
    # so the interpolated crossing sits on the box face (within 1e-4 voxel), not half a voxel outside it.
    outside = iso - 1e4 * (hi - min(lo, iso) + 1.0)
    padded = np.pad(volume.astype(np.float64), 1, mode="constant", constant_values=outside)
    verts, faces = mcubes.marching_cubes(padded, iso)
    verts = (verts - 1.0) * (2.0 * half_extent / (n - 1)) - half_extent  # voxel index -> world
    faces = faces.astype(np.int64)
    # PyMCubes already shares vertices between faces; no tolerance merge (it can fuse near-coincident
    # vertices where the field touches the iso level at a grid node and break the topology).
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if mesh.volume < 0:  # PyMCubes' winding depends on which side is "inside": make it outward
        mesh.invert()
    return ExtractedMesh(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64),
                         iso=float(iso), resolution=n)


def postprocess(mesh: ExtractedMesh, smooth_iterations: int = 0, target_faces: int | None = None) -> ExtractedMesh:
    """Optional Taubin smoothing (keeps volume, unlike Laplacian) and quadric decimation."""
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    if smooth_iterations:
        trimesh.smoothing.filter_taubin(tm, iterations=smooth_iterations)
    if target_faces and target_faces < len(tm.faces):
        try:
            tm = tm.simplify_quadric_decimation(face_count=target_faces)
        except ImportError:
            raise ValueError("decimation needs the fast-simplification package: pip install fast-simplification")
    return ExtractedMesh(np.asarray(tm.vertices, dtype=np.float64), np.asarray(tm.faces, dtype=np.int64),
                         iso=mesh.iso, resolution=mesh.resolution)


def extract_mesh(field: Callable[[np.ndarray], np.ndarray], resolution: int, half_extent: float, iso: float,
                 smooth_iterations: int = 0, target_faces: int | None = None,
                 chunk: int = 1 << 16) -> ExtractedMesh:
    """Any scalar field (higher inside) -> closed, outward-facing mesh. The generator and tests share this."""
    volume = sample_grid(field, resolution, half_extent, chunk)
    mesh = marching_cubes(volume, iso, half_extent)
    if smooth_iterations or target_faces:
        mesh = postprocess(mesh, smooth_iterations, target_faces)
    return mesh


# -- the generator ---------------------------------------------------------------------

def seed_latent(G, seed: int, truncation_psi: float = 0.7) -> torch.Tensor:
    """ws (1, num_ws, w_dim) of one identity, mapped with the front camera (as the registry and grids do)."""
    device = next(G.parameters()).device
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(int(seed))).to(device)
    front = torch.tensor(camera_label(0.0, 0.0), dtype=torch.float32, device=device)[None]
    with torch.no_grad():
        return G.mapping(z, front, truncation_psi=truncation_psi)


@torch.no_grad()
def generator_mesh(G, ws: torch.Tensor, resolution: int = 128, iso: float = EG3D_ISO_SIGMA,
                   smooth_iterations: int = 0, target_faces: int | None = None,
                   chunk: int = 1 << 16) -> ExtractedMesh:
    """The surface ``sigma = iso`` of one avatar (ws (1, num_ws, w_dim)), with decoder vertex colours."""
    device = next(G.parameters()).device
    planes = G.synthesize_planes(ws[:1], noise_mode="const")

    def query(points: np.ndarray) -> torch.Tensor:
        pts = torch.as_tensor(points, dtype=torch.float32, device=device)[None]
        return G.sample_density(planes, pts)

    mesh = extract_mesh(lambda p: query(p).sigma[0, :, 0].cpu().numpy(), resolution, G.cfg.box_warp / 2, iso,
                        smooth_iterations, target_faces, chunk)
    rgb = np.concatenate([query(mesh.vertices[i:i + chunk]).rgb[0].cpu().numpy()
                          for i in range(0, len(mesh.vertices), chunk)])
    mesh.colors = colors_to_rgba(rgb)
    return mesh


def colors_to_rgba(rgb: np.ndarray) -> np.ndarray:
    """Decoder colours in [0, 1] (the widened sigmoid reaches -0.001..1.001) -> (V, 4) uint8 RGBA."""
    rgb8 = np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)
    return np.concatenate([rgb8, np.full((len(rgb8), 1), 255, np.uint8)], axis=1)


# -- files --------------------------------------------------------------------------

def export_mesh(mesh: ExtractedMesh, path: str | Path) -> Path:
    """Write PLY / OBJ / GLB (by suffix) with vertex colours."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise ValueError(f"--out: {path.name} has format {fmt!r}; pass a .glb, .ply or .obj file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, _encode(mesh.to_trimesh(), fmt))


def mesh_bytes(mesh: ExtractedMesh, fmt: str = "glb") -> bytes:
    if fmt not in MESH_FORMATS:
        raise ValueError(f"mesh format {fmt!r}: pass one of {', '.join(MESH_FORMATS)}")
    return _encode(mesh.to_trimesh(), fmt)


def glb_bytes(tm: trimesh.Trimesh) -> bytes:
    """A trimesh (e.g. a PLY read back) as GLB, its vertex colours converted as :func:`_encode` does."""
    return _encode(tm, "glb")


def _encode(tm: trimesh.Trimesh, fmt: str) -> bytes:
    if fmt == "obj":  # OBJ carries per-vertex colours only through trimesh's "v x y z r g b" extension
        data = tm.export(file_type=fmt, include_color=True)
    elif fmt == "glb" and tm.visual.kind == "vertex":
        # glTF reads COLOR_0 as linear light and viewers encode it to sRGB for display; our colours are sRGB
        # (as the renders show them): convert, or every glTF viewer shows them brighter and yellower.
        tm = tm.copy()
        colors = np.asarray(tm.visual.vertex_colors).copy()
        colors[:, :3] = srgb_to_linear_u8(colors[:, :3])
        tm.visual.vertex_colors = colors
        data = tm.export(file_type=fmt)
    else:
        data = tm.export(file_type=fmt)
    return data if isinstance(data, bytes) else data.encode()


def srgb_to_linear_u8(rgb: np.ndarray) -> np.ndarray:
    """8-bit sRGB -> 8-bit linear light (the sRGB transfer function, IEC 61966-2-1)."""
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return (linear * 255.0).round().astype(np.uint8)


def preview_image(mesh: ExtractedMesh, label=None, size: int = 256) -> np.ndarray:
    """(size, size, 3) uint8: the mesh ray-cast from a camera (default: the front), vertex colours
    shaded by a light at the camera. Shows the exported geometry itself, not a neural render."""
    rays = pixel_rays(camera_label(0.0, 0.0) if label is None else label, size)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    locations, ray_idx, tri_idx = tm.ray.intersects_location(rays.origins, rays.directions, multiple_hits=False)
    image = np.zeros((size * size, 3), dtype=np.float64)
    if len(ray_idx):
        colors = (mesh.colors[:, :3].astype(np.float64) / 255.0 if mesh.colors is not None
                  else np.full((len(mesh.vertices), 3), 0.8))
        face_rgb = colors[mesh.faces[tri_idx]].mean(axis=1)
        shade = np.abs((tm.face_normals[tri_idx] * rays.directions[ray_idx]).sum(-1))
        image[ray_idx] = face_rgb * (0.25 + 0.75 * shade[:, None])
    return (image.reshape(size, size, 3) * 255).round().astype(np.uint8)
