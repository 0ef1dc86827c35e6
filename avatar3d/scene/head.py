"""The canonical head-and-shoulders model the pose guidance is rendered from (docs/method.md section 2).

StyleAvatar3D renders its OpenPose and depth guidance from an existing 3D
head rather than running a detector on images. No head scan ships with
avatar3d, so the default model is procedural:

* Geometry: a signed distance field built from textbook anthropometric
  proportions of an adult head (head breadth ~150 mm, length ~196 mm,
  vertex-to-chin ~238 mm, interpupillary distance 64 mm, eye-to-mouth
  ~70 mm) as a smooth union of ellipsoids, spheres and capsules: skull,
  forehead, brows, midface, cheeks, jaw, mandible lines, chin, eye sockets
  (carved) with eyeballs, nose bridge, tip and wings, lips, ears, neck,
  trapezius, shoulders and the top of the chest. The shoulders are a little
  narrower than a real adult's (~380 mm instead of ~400 mm) so that they stay
  in frame, as in stylised busts. The field is sampled on a regular grid
  over EG3D's box and turned into a triangle mesh with PyMCubes' marching
  cubes, then wrapped in a ``trimesh.Trimesh``. It is built once per process
  and cached in memory (about 1-2 s at the default 192^3 grid).
* Units and frame: the world frame of ``avatar3d.scene.cameras`` (y up, the
  subject faces +z, subject's left at +x). Metres are scaled by
  ``UNITS_PER_METRE`` = 1.75 world units and the eyes sit at y = +0.06, so the
  head and shoulders lie inside EG3D's box ([-0.5, 0.5]^3; the chest is cut
  flat at y = -0.48). With the EG3D camera (radius 2.7, focal 4.2647, looking
  at the origin) the image spans ~0.63 world units (~360 mm) at the head:
  the head fills about two thirds of the image height with the neck and the
  tops of the shoulders below it (crown ~8% from the top, chin at ~73%),
  like a FFHQ-style portrait crop with some room for 360-degree views.
* Landmarks (see ``avatar3d.scene.landmarks`` for names and order): each is
  defined by a ray aimed at the surface from outside, and sits where the ray
  first hits the mesh, so it lies exactly on the surface; its normal is the
  mesh's interpolated vertex normal there. Face points are aimed straight
  back (-z) from their frontal (x, y) position on a 64 mm-IPD face layout
  (eyes, brows, nose, lips, pupils); the 17 jaw points are aimed at the
  vertical axis x = 0, z = 30 mm (metric frame; the eyeballs' fronts are at
  z = 78 mm) from directions fanning from -75 deg (subject's right) through
  0 (chin) to +75 deg; ears from 50 deg off the front (their front-lateral
  rim, which a front camera sees); shoulders from above (their top, seen
  from front and back: each is aimed where the shoulder's ridge has no
  forward tilt); the neck point is the front of the neck base (the
  jugular notch); the OpenPose nose is the nose tip (face 30); the OpenPose
  eyes sit on the eyeballs 25 deg lateral of the pupils, where a profile
  camera still sees them.

A user's own mesh (any format trimesh loads) plus a landmark file can replace
it: :func:`load_head`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import mcubes
import numpy as np
import trimesh
from trimesh.ray import ray_triangle

from avatar3d.scene.landmarks import (
    BODY_NAMES,
    LANDMARK_NAMES,
    NUM_FACE,
    NUM_LANDMARKS,
    Landmarks,
    load_landmarks,
)

UNITS_PER_METRE = 1.75
HEAD_OFFSET = np.array([0.0, 0.06, 0.0])  # world position of the metric origin (between the eyes' centres, at eye level)
BOX_LIMIT = 0.48  # the mesh is clipped to [-0.48, 0.48]^3, inside EG3D's box of size 1
DEFAULT_RESOLUTION = 192


# ---------------------------------------------------------------- SDF pieces (metres)

def _ellipsoid(x, y, z, centre, radii, tilt_x_deg: float = 0.0):
    """Approximate signed distance to an ellipsoid (Quilez's k0(k0-1)/k1 bound), optionally tilted about x."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if tilt_x_deg:
        a = np.radians(tilt_x_deg)
        dy, dz = np.cos(a) * dy + np.sin(a) * dz, -np.sin(a) * dy + np.cos(a) * dz
    rx, ry, rz = radii
    k0 = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + (dz / rz) ** 2)
    k1 = np.sqrt((dx / rx**2) ** 2 + (dy / ry**2) ** 2 + (dz / rz**2) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _sphere(x, y, z, centre, radius):
    return np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) - radius


def _capsule(x, y, z, a, b, radius):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ab = b - a
    h = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / ab.dot(ab), 0.0, 1.0)
    return np.sqrt((x - a[0] - h * ab[0]) ** 2 + (y - a[1] - h * ab[1]) ** 2 + (z - a[2] - h * ab[2]) ** 2) - radius


def _smooth_union(a, b, k):
    """Polynomial smooth minimum: blends the two surfaces over a band of width ~k (metres)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smooth_subtract(a, b, k):
    """a minus b, with a rounded rim of width ~k."""
    return -_smooth_union(-a, b, k)


def head_sdf_metres(x, y, z):
    """Signed distance (metres, negative inside) of the procedural head; metric frame, eyes at y = 0.

    Paired parts are evaluated on |x| so left and right are exact mirror images.
    """
    ax = np.abs(x)
    # Cranium and face.
    d = _ellipsoid(x, y, z, (0.0, 0.02, -0.02), (0.074, 0.100, 0.098))
    d = _smooth_union(d, _ellipsoid(x, y, z, (0.0, 0.03, 0.025), (0.064, 0.055, 0.060)), 0.012)
    d = _smooth_union(d, _ellipsoid(x, y, z, (0.0, -0.03, 0.025), (0.060, 0.065, 0.060)), 0.012)
    d = _smooth_union(d, _ellipsoid(x, y, z, (0.0, -0.062, 0.010), (0.057, 0.048, 0.062)), 0.012)
    d = _smooth_union(d, _capsule(ax, y, z, (0.052, -0.062, -0.015), (0.012, -0.103, 0.058), 0.016), 0.012)
    d = _smooth_union(d, _ellipsoid(x, y, z, (0.0, -0.100, 0.064), (0.022, 0.018, 0.020)), 0.010)
    d = _smooth_union(d, _ellipsoid(ax, y, z, (0.040, -0.024, 0.052), (0.022, 0.017, 0.020)), 0.012)  # cheekbones
    d = _smooth_union(d, _ellipsoid(ax, y, z, (0.030, 0.016, 0.070), (0.026, 0.010, 0.012)), 0.012)  # brow ridges
    d = _smooth_union(d, _ellipsoid(x, y, z, (0.0, -0.066, 0.060), (0.032, 0.028, 0.026)), 0.010)  # mouth muzzle
    # Eye sockets, then the eyeballs inside them.
    d = _smooth_subtract(d, _sphere(ax, y, z, (0.032, 0.0, 0.088), 0.018), 0.006)
    d = np.minimum(d, _sphere(ax, y, z, (0.032, 0.0, 0.066), 0.0125))
    # Nose: bridge, tip, wings.
    d = _smooth_union(d, _capsule(x, y, z, (0.0, 0.004, 0.080), (0.0, -0.034, 0.098), 0.0085), 0.008)
    d = _smooth_union(d, _sphere(x, y, z, (0.0, -0.039, 0.099), 0.0105), 0.006)
    d = _smooth_union(d, _sphere(ax, y, z, (0.012, -0.044, 0.090), 0.0075), 0.006)
    # Lips, with a crease between them (mouth line at y = -0.0695).
    lips = np.minimum(
        _ellipsoid(x, y, z, (0.0, -0.063, 0.081), (0.024, 0.0065, 0.010)),
        _ellipsoid(x, y, z, (0.0, -0.076, 0.079), (0.021, 0.007, 0.010)),
    )
    d = _smooth_union(d, lips, 0.006)
    # Ears: flat ellipsoids, turned a little forward, kept distinct from the skull.
    d = _smooth_union(d, _ellipsoid(ax, y, z, (0.077, -0.008, -0.012), (0.010, 0.031, 0.019)), 0.004)
    # Neck, trapezius, shoulders, top of the chest.
    body = _capsule(x, y, z, (0.0, -0.06, -0.022), (0.0, -0.22, -0.022), 0.052)
    body = _smooth_union(body, _capsule(ax, y, z, (0.02, -0.13, -0.035), (0.14, -0.20, -0.025), 0.042), 0.03)
    body = _smooth_union(body, _sphere(ax, y, z, (0.145, -0.205, -0.02), 0.045), 0.03)
    body = _smooth_union(body, _ellipsoid(x, y, z, (0.0, -0.27, -0.02), (0.16, 0.09, 0.095)), 0.04)
    return _smooth_union(d, body, 0.02)


def head_sdf_world(points) -> np.ndarray:
    """Signed distance in world units at world points (N, 3), clipped to the box."""
    p = np.asarray(points, dtype=np.float64)
    m = (p - HEAD_OFFSET) / UNITS_PER_METRE
    d = head_sdf_metres(m[..., 0], m[..., 1], m[..., 2]) * UNITS_PER_METRE
    return np.maximum(d, np.abs(p).max(axis=-1) - BOX_LIMIT)


# ---------------------------------------------------------------- landmark aims (metres)

def _front(x, y):
    """Aim straight back at the frontal position (x, y)."""
    return (x, y, 0.5), (0.0, 0.0, -1.0)


def _from_angle(target, angle_deg, elevation_deg=0.0):
    """Aim at ``target`` from a direction ``angle_deg`` about y off the front (+ toward +x)."""
    a, e = np.radians(angle_deg), np.radians(elevation_deg)
    out = np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])
    return tuple(np.asarray(target) + 0.5 * out), tuple(-out)


JAW_AXIS_Z = 0.03  # metres: jaw points are aimed at the vertical axis (0, y, JAW_AXIS_Z)
JAW_FAN_DEG = 75.0  # ... from directions fanning +-JAW_FAN_DEG about y
EYEBALL_CENTRE = (0.032, 0.0, 0.066)


def _face_aims():
    """70 (origin, direction) pairs in the metric frame, iBUG order + pupils."""
    aims = []
    for k in range(17):  # jaw: subject's right ear (k=0) -> chin (8) -> left ear (16)
        t = (k - 8) / 8.0
        y = -0.113 + 0.108 * abs(t) ** 1.5
        aims.append(_from_angle((0.0, y, JAW_AXIS_Z), JAW_FAN_DEG * t))
    brow_x = (0.052, 0.044, 0.035, 0.026, 0.016)
    brow_y = (0.013, 0.019, 0.021, 0.020, 0.017)
    aims += [_front(-bx, by) for bx, by in zip(brow_x, brow_y)]  # 17-21 right brow, outer -> inner
    aims += [_front(bx, by) for bx, by in zip(brow_x[::-1], brow_y[::-1])]  # 22-26 left brow, inner -> outer
    aims += [_front(0.0, y) for y in (0.004, -0.010, -0.024, -0.038)]  # 27-30 bridge -> tip
    aims += [_front(x, y) for x, y in ((-0.013, -0.046), (-0.007, -0.048), (0.0, -0.050), (0.007, -0.048), (0.013, -0.046))]
    # Eyes: 36 outer corner, 37-38 upper lid, 39 inner corner, 40-41 lower lid (right); mirrored for 42-47 (left).
    right_eye = ((-0.045, 0.0), (-0.037, 0.0055), (-0.027, 0.0055), (-0.0195, -0.0005), (-0.027, -0.0045), (-0.037, -0.0045))
    left_eye = ((0.0195, -0.0005), (0.027, 0.0055), (0.037, 0.0055), (0.045, 0.0), (0.037, -0.0045), (0.027, -0.0045))
    aims += [_front(x, y) for x, y in right_eye + left_eye]
    outer_lips = ((-0.025, -0.0695), (-0.016, -0.064), (-0.007, -0.061), (0.0, -0.062), (0.007, -0.061), (0.016, -0.064),
                  (0.025, -0.0695), (0.016, -0.077), (0.007, -0.081), (0.0, -0.082), (-0.007, -0.081), (-0.016, -0.077))
    inner_lips = ((-0.019, -0.0695), (-0.008, -0.068), (0.0, -0.068), (0.008, -0.068),
                  (0.019, -0.0695), (0.008, -0.071), (0.0, -0.071), (-0.008, -0.071))
    aims += [_front(x, y) for x, y in outer_lips + inner_lips]
    aims += [_front(-0.032, 0.0), _front(0.032, 0.0)]  # 68 right pupil, 69 left pupil
    assert len(aims) == NUM_FACE
    return aims



EAR_CENTRE = (0.077, -0.008, -0.012)
SHOULDER_X = 0.145


def _body_aims(face_aims, shoulder_z: float = -0.02):
    def mirror(p):
        return (-p[0], p[1], p[2])

    return {
        "nose": face_aims[30],
        "neck": _front(0.0, -0.17),
        "right_shoulder": ((-SHOULDER_X, 0.5, shoulder_z), (0.0, -1.0, 0.0)),
        "left_shoulder": ((SHOULDER_X, 0.5, shoulder_z), (0.0, -1.0, 0.0)),
        # The OpenPose eye is the eye's centre; aiming 25 deg lateral of the pupil puts it on the
        # eyeball where a profile camera still sees it (the pupil itself faces straight ahead).
        "right_eye": _from_angle(mirror(EYEBALL_CENTRE), -25.0),
        "left_eye": _from_angle(EYEBALL_CENTRE, 25.0),
        "right_ear": _from_angle(mirror(EAR_CENTRE), -50.0),
        "left_ear": _from_angle(EAR_CENTRE, 50.0),
    }


def landmark_aims_world(shoulder_z: float = -0.02):
    """(origins (78, 3), directions (78, 3)) in world units, in LANDMARK_NAMES order.

    ``shoulder_z`` (metres) is where the shoulders are aimed from above.
    """
    face = _face_aims()
    body = _body_aims(face, shoulder_z)
    aims = [body[n] for n in BODY_NAMES] + face
    origins = np.array([a[0] for a in aims]) * UNITS_PER_METRE + HEAD_OFFSET
    directions = np.array([a[1] for a in aims], dtype=np.float64)
    return origins, directions / np.linalg.norm(directions, axis=1, keepdims=True)


# ---------------------------------------------------------------- the model

def interpolate_normals(vertex_normals, faces, v0, v1, v2, points) -> np.ndarray:
    """Unit normals at ``points`` on triangles (v0, v1, v2) from barycentric blends of vertex normals."""
    # Barycentric weights by Cramer's rule on the two edge vectors.
    e0, e1, ep = v1 - v0, v2 - v0, points - v0
    d00 = np.einsum("ij,ij->i", e0, e0)
    d01 = np.einsum("ij,ij->i", e0, e1)
    d11 = np.einsum("ij,ij->i", e1, e1)
    dp0 = np.einsum("ij,ij->i", ep, e0)
    dp1 = np.einsum("ij,ij->i", ep, e1)
    det = d00 * d11 - d01 * d01
    det = np.where(np.abs(det) > 1e-30, det, 1e-30)
    b1 = np.clip((d11 * dp0 - d01 * dp1) / det, 0.0, 1.0)
    b2 = np.clip((d00 * dp1 - d01 * dp0) / det, 0.0, 1.0)
    b0 = np.clip(1.0 - b1 - b2, 0.0, 1.0)
    vn = vertex_normals
    nrm = b0[:, None] * vn[faces[:, 0]] + b1[:, None] * vn[faces[:, 1]] + b2[:, None] * vn[faces[:, 2]]
    return nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class RayHits:
    """First hits of a batch of rays; misses have triangle -1, distance inf, NaN point and normal."""

    triangle: np.ndarray  # (N,) int64
    distance: np.ndarray  # (N,) float64, along the unit ray direction
    point: np.ndarray  # (N, 3)
    normal: np.ndarray  # (N, 3) interpolated vertex normal, unit

    @property
    def hit(self) -> np.ndarray:
        return self.triangle >= 0


class HeadModel:
    """A watertight-ish triangle mesh plus its 78 surface landmarks; caches its ray intersector."""

    def __init__(self, mesh, landmarks: Landmarks, source: str):
        self.mesh = mesh
        self.landmarks = landmarks
        self.source = source

    def __repr__(self) -> str:
        return f"HeadModel(source={self.source!r}, vertices={len(self.mesh.vertices)}, faces={len(self.mesh.faces)})"

    @cached_property
    def intersector(self):
        """Embree-backed when embreex is importable (~10x faster), else trimesh's pure-numpy one."""
        try:
            from trimesh.ray import ray_pyembree  # optional: needs embreex, which may be missing or broken

            return ray_pyembree.RayMeshIntersector(self.mesh)
        except Exception:  # embreex missing or broken: still correct, only slower
            return ray_triangle.RayMeshIntersector(self.mesh)

    @cached_property
    def _vertex_normals(self) -> np.ndarray:
        return np.asarray(self.mesh.vertex_normals, dtype=np.float64)

    def cast(self, origins, directions) -> RayHits:
        """First surface hit of each ray. Distances are recomputed in float64 from the hit triangle's plane
        (embree works in float32), so depth is exact to ~1e-9 world units on the mesh."""
        origins = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
        directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        tri = np.asarray(self.intersector.intersects_first(origins, directions), dtype=np.int64)
        n = len(origins)
        distance = np.full(n, np.inf)
        point = np.full((n, 3), np.nan)
        normal = np.full((n, 3), np.nan)
        hit = np.flatnonzero(tri >= 0)
        if hit.size:
            faces = np.asarray(self.mesh.faces)[tri[hit]]
            verts = np.asarray(self.mesh.vertices, dtype=np.float64)
            v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
            face_n = np.cross(v1 - v0, v2 - v0)
            denom = np.einsum("ij,ij->i", face_n, directions[hit])
            t = np.einsum("ij,ij->i", face_n, v0 - origins[hit]) / np.where(np.abs(denom) > 1e-30, denom, 1e-30)
            p = origins[hit] + t[:, None] * directions[hit]
            distance[hit], point[hit] = t, p
            normal[hit] = interpolate_normals(self._vertex_normals, faces, v0, v1, v2, p)
        return RayHits(triangle=tri, distance=distance, point=point, normal=normal)


# ---------------------------------------------------------------- building and loading

def sample_sdf_grid(resolution: int, chunk: int = 1 << 18) -> np.ndarray:
    """:func:`head_sdf_world` on a resolution^3 grid over [-0.5, 0.5]^3 (index order x, y, z).

    Evaluated coarse-to-fine: a grid 4x coarser first, then the exact field
    only at fine points whose coarse neighbour lies within a band of the
    surface. Elsewhere the coarse value stands in: marching cubes needs exact
    values near the surface and only the right sign away from it. This is
    ~10x faster than evaluating every point.
    """
    axis = np.linspace(-0.5, 0.5, resolution)
    step = 4
    coarse_idx = np.arange(0, resolution + step - 1, step).clip(max=resolution - 1)
    coarse_idx = np.unique(coarse_idx)
    cx = axis[coarse_idx]
    g = np.stack(np.meshgrid(cx, cx, cx, indexing="ij"), axis=-1).reshape(-1, 3)
    coarse = head_sdf_world(g).reshape(len(cx), len(cx), len(cx))
    # Nearest coarse sample of every fine index.
    nearest = np.abs(np.arange(resolution)[:, None] - coarse_idx[None, :]).argmin(axis=1)
    field = coarse[np.ix_(nearest, nearest, nearest)]
    # The ellipsoid distances are bounds, not exact: use a generous band (3 coarse cells).
    band = 3.0 * step / (resolution - 1)
    near = np.flatnonzero(np.abs(field).reshape(-1) < band)
    flat = field.reshape(-1)
    for start in range(0, near.size, chunk):
        idx = near[start:start + chunk]
        i, j, k = np.unravel_index(idx, field.shape)
        flat[idx] = head_sdf_world(np.stack([axis[i], axis[j], axis[k]], axis=-1))
    return flat.reshape(field.shape)


def build_procedural_mesh(resolution: int = DEFAULT_RESOLUTION):
    """Marching cubes of :func:`head_sdf_world` on a resolution^3 grid over [-0.5, 0.5]^3 -> trimesh.Trimesh."""
    if resolution < 32:
        raise ValueError(f"resolution={resolution} is too coarse for a face; pass 32 or more (default {DEFAULT_RESOLUTION})")
    sdf = sample_sdf_grid(resolution)
    # PyMCubes makes outward-facing triangles for a field that is positive inside.
    verts, faces = mcubes.marching_cubes(-sdf, 0.0)
    verts = verts * (1.0 / (resolution - 1)) - 0.5  # voxel index -> world
    return trimesh.Trimesh(vertices=verts, faces=faces.astype(np.int64), process=True)


def _landmarks_by_aim(head: HeadModel) -> Landmarks:
    # Shoulders go on the ridge of the shoulder (where the normal has no forward/backward tilt), so
    # a level camera sees them from the front and from behind alike: search the aim's z for it.
    zs = np.linspace(-0.06, 0.02, 33)
    i = LANDMARK_NAMES.index("left_shoulder")
    tilt = [abs(head.cast(*(a[i:i + 1] for a in landmark_aims_world(z))).normal[0, 2]) for z in zs]
    origins, directions = landmark_aims_world(float(zs[int(np.nanargmin(tilt))]))
    hits = head.cast(origins, directions)
    if not hits.hit.all():
        missed = LANDMARK_NAMES[int(np.flatnonzero(~hits.hit)[0])]
        raise RuntimeError(f"landmark aim for {missed!r} missed the procedural head; the geometry and the aims disagree")
    return Landmarks(positions=hits.point, normals=hits.normal)


@functools.lru_cache(maxsize=4)
def canonical_head(resolution: int = DEFAULT_RESOLUTION) -> HeadModel:
    """The procedural head (built once per resolution per process)."""
    mesh = build_procedural_mesh(resolution)
    # Landmarks are found by casting rays at this very mesh, so the head exists (with placeholders) first.
    placeholder = Landmarks(np.zeros((NUM_LANDMARKS, 3)), np.tile([0.0, 0.0, 1.0], (NUM_LANDMARKS, 1)))
    head = HeadModel(mesh, placeholder, source=f"procedural@{resolution}")
    head.landmarks = _landmarks_by_aim(head)
    return head


def closest_surface_points(mesh, points, k: int = 48):
    """Closest points on ``mesh`` to a few query points -> (closest (N, 3), distance (N,), triangle (N,)).

    Exact closest points on the triangles around each query's ``k`` nearest
    vertices: enough for points near a reasonably even surface, and free of
    trimesh's optional rtree dependency (its proximity module needs it).
    """
    points = np.asarray(points, dtype=np.float64)
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    k = min(k, len(verts))
    vv = (verts**2).sum(1)
    nearest = np.concatenate([  # squared distances |p|^2 - 2 p.v + |v|^2, 32 queries at a time to bound memory
        np.argpartition(vv[None, :] - 2.0 * chunk @ verts.T, k - 1, axis=1)[:, :k]
        for chunk in np.array_split(points, max(1, len(points) // 32))
    ]) if len(points) else np.zeros((0, k), dtype=np.int64)
    vertex_faces = np.asarray(mesh.vertex_faces)  # (V, max_valence), -1 padded
    closest = np.empty_like(points)
    distance = np.empty(len(points))
    triangle = np.empty(len(points), dtype=np.int64)
    for i, vs in enumerate(nearest):
        cand = np.unique(vertex_faces[vs])
        cand = cand[cand >= 0]
        q = trimesh.triangles.closest_point(mesh.triangles[cand], np.broadcast_to(points[i], (len(cand), 3)))
        dist = np.linalg.norm(q - points[i], axis=1)
        j = int(np.argmin(dist))
        closest[i], distance[i], triangle[i] = q[j], dist[j], cand[j]
    return closest, distance, triangle


def snap_to_surface(mesh, points, max_distance: float | None = None, names=LANDMARK_NAMES) -> Landmarks:
    """Move each point to the closest point of ``mesh`` and take the surface normal there.

    A point farther than ``max_distance`` (default: 3% of the mesh's bounding-box
    diagonal) from the surface raises ValueError naming the landmark: such a file
    was made for a different mesh or in different units.
    """
    points = np.asarray(points, dtype=np.float64)
    if max_distance is None:
        max_distance = 0.03 * float(np.linalg.norm(mesh.extents))
    closest, dist, tri = closest_surface_points(mesh, points)
    far = np.flatnonzero(dist > max_distance)
    if far.size:
        i = int(far[0])
        raise ValueError(
            f"landmark {names[i]!r} at {points[i].round(4).tolist()} is {dist[i]:.4f} from the mesh surface "
            f"(limit {max_distance:.4f}); pass landmarks on this mesh, in its units"
        )
    faces = np.asarray(mesh.faces)[tri]
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    vertex_normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    normals = interpolate_normals(vertex_normals, faces, verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]], closest)
    return Landmarks(positions=closest, normals=normals)


def load_head(mesh_path, landmarks_path) -> HeadModel:
    """A user's head: a mesh file trimesh can load plus a landmark JSON (see ``avatar3d.scene.landmarks``).

    Both must be in the world frame of ``avatar3d.scene.cameras`` (y up, facing
    +z, inside [-0.5, 0.5]^3). Landmarks are snapped onto the surface.
    """
    mesh_path = Path(mesh_path)
    if not mesh_path.is_file():
        raise ValueError(f"mesh file not found: {str(mesh_path)!r}; pass a mesh trimesh can load (.ply, .obj, .glb, .stl, ...)")
    positions = load_landmarks(landmarks_path)
    try:
        mesh = trimesh.load(mesh_path, force="mesh", process=True)
    except Exception as err:  # trimesh raises many types for unreadable files
        raise ValueError(f"mesh file {str(mesh_path)!r} could not be loaded ({err.__class__.__name__}: {err})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"mesh file {str(mesh_path)!r} holds no triangles; pass a triangle mesh")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"mesh file {str(mesh_path)!r} has non-finite vertex coordinates")
    return HeadModel(mesh, snap_to_surface(mesh, positions), source=str(mesh_path))
