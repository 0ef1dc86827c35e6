"""Cameras and the EG3D 25-float pose label (docs/method.md section 1).

Label layout, exactly as EG3D stores it in ``dataset.json``:
    c[0:16]  = OpenCV camera-to-world 4x4, row-major
               (columns: camera x = image right, camera y = image down,
                camera z = viewing direction, camera position)
    c[16:25] = 3x3 intrinsics normalised by image size (fx, 0, cx, 0, fy, cy, 0, 0, 1),
               principal point (0.5, 0.5)

World frame: y up, the subject faces +z. Yaw 0 puts the camera at (0, 0, +r);
yaw +90 at (+r, 0, 0).

Pitch in avatar3d is the true elevation of the camera: positive = above the
head, looking down. EG3D's ``LookAtPoseSampler`` instead puts the camera at
height ``y = -r * pitch_eg3d / (pi / 2)``; :func:`eg3d_pitch_from_elevation`
converts. For any camera position the cam2world matrix is EG3D's, bit for bit
in float64 (same cross products, same pivot handling: the camera sits on the
sphere about the origin and the pivot only sets the viewing direction).

All functions take scalars or arrays (leading batch dims) and return numpy
float64 arrays; :func:`camera_rays` is the one torch function, used by the
volume renderer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# EG3D's FFHQ face defaults. The focal length is stored, not recomputed from a
# rounded FOV: EG3D's FOV_to_intrinsics uses 3.14159 and 1.414.
EG3D_FOCAL = 4.2647
EG3D_RADIUS = 2.7
EG3D_FACE_PIVOT = (0.0, 0.0, 0.2)
# Full-head (360 degree) default (ours): look at the origin.
HEAD_PIVOT = (0.0, 0.0, 0.0)

_UP = np.array([0.0, 1.0, 0.0])


def focal_from_fov(fov_deg: float) -> float:
    """Normalised focal length for a vertical field of view, EG3D's formula."""
    return float(1.0 / (math.tan(fov_deg * 3.14159 / 360.0) * 1.414))


def fov_from_focal(focal: float) -> float:
    """Inverse of :func:`focal_from_fov` (degrees)."""
    return float(math.atan(1.0 / (focal * 1.414)) * 360.0 / 3.14159)


def intrinsics(focal: float = EG3D_FOCAL) -> np.ndarray:
    """3x3 intrinsics normalised by image size, principal point at the centre."""
    return np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])


def wrap_degrees(angle):
    """Wrap angles to [-180, 180)."""
    return (np.asarray(angle, dtype=np.float64) + 180.0) % 360.0 - 180.0


def camera_position(yaw_deg, pitch_deg, radius: float = EG3D_RADIUS) -> np.ndarray:
    """Camera centre on the sphere of ``radius``: (..., 3)."""
    yaw = np.radians(np.asarray(yaw_deg, dtype=np.float64))
    pitch = np.radians(np.asarray(pitch_deg, dtype=np.float64))
    yaw, pitch = np.broadcast_arrays(yaw, pitch)
    return radius * np.stack(
        [np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)], axis=-1
    )


def look_at(origin, pivot=HEAD_PIVOT) -> np.ndarray:
    """OpenCV cam2world (..., 4, 4) for cameras at ``origin`` looking at ``pivot``.

    Same construction as EG3D's ``create_cam2world_matrix``: right = -(up x f),
    down = f x right, with world up = +y. Undefined straight above or below.
    """
    origin = np.asarray(origin, dtype=np.float64)
    forward = np.asarray(pivot, dtype=np.float64) - origin
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = -np.cross(np.broadcast_to(_UP, forward.shape), forward)
    norm = np.linalg.norm(right, axis=-1, keepdims=True)
    if np.any(norm < 1e-8):
        raise ValueError("look_at: camera looks straight up or down (pitch of +-90 deg); the roll is undefined")
    right = right / norm
    down = np.cross(forward, right)
    down = down / np.linalg.norm(down, axis=-1, keepdims=True)
    c2w = np.zeros(origin.shape[:-1] + (4, 4))
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = origin
    c2w[..., 3, 3] = 1.0
    return c2w


def cam2world(yaw_deg, pitch_deg, radius: float = EG3D_RADIUS, pivot=HEAD_PIVOT) -> np.ndarray:
    """cam2world (..., 4, 4) for a yaw and an elevation (degrees)."""
    return look_at(camera_position(yaw_deg, pitch_deg, radius), pivot)


def make_label(c2w, focal: float = EG3D_FOCAL) -> np.ndarray:
    """The 25-float EG3D label (..., 25) from cam2world (..., 4, 4)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    k = np.broadcast_to(intrinsics(focal).reshape(9), c2w.shape[:-2] + (9,))
    return np.concatenate([c2w.reshape(c2w.shape[:-2] + (16,)), k], axis=-1)


def camera_label(yaw_deg, pitch_deg, radius: float = EG3D_RADIUS, pivot=HEAD_PIVOT,
                 focal: float = EG3D_FOCAL) -> np.ndarray:
    """yaw, elevation (degrees) -> 25-float label (..., 25)."""
    return make_label(cam2world(yaw_deg, pitch_deg, radius, pivot), focal)


def split_label(label):
    """label (..., 25) -> (cam2world (..., 4, 4), normalised intrinsics (..., 3, 3))."""
    label = np.asarray(label, dtype=np.float64)
    if label.shape[-1] != 25:
        raise ValueError(f"camera label must have 25 values (16 cam2world + 9 intrinsics), got {label.shape[-1]}")
    return label[..., :16].reshape(label.shape[:-1] + (4, 4)), label[..., 16:].reshape(label.shape[:-1] + (3, 3))


def label_to_yaw_pitch(label):
    """25-float label -> (yaw, elevation) in degrees, from the camera position."""
    c2w, _ = split_label(label)
    t = c2w[..., :3, 3]
    r = np.linalg.norm(t, axis=-1)
    yaw = np.degrees(np.arctan2(t[..., 0], t[..., 2]))
    pitch = np.degrees(np.arcsin(np.clip(t[..., 1] / r, -1.0, 1.0)))
    return yaw, pitch


# Entries of cam2world negated by a horizontal mirror (x -> -x in the world and
# in the image): the similarity diag(-1,1,1) R diag(-1,1,1), and t_x -> -t_x.
_FLIP_ENTRIES = ((0, 1), (0, 2), (1, 0), (2, 0), (0, 3))


def flip_label(label) -> np.ndarray:
    """Mirror a label to match a horizontally flipped image (yaw -> -yaw). An involution."""
    out = np.array(label, dtype=np.float64, copy=True)
    c2w = out[..., :16].reshape(out.shape[:-1] + (4, 4))
    for i, j in _FLIP_ENTRIES:
        c2w[..., i, j] *= -1.0
    out[..., :16] = c2w.reshape(out.shape[:-1] + (16,))
    return out


def flip_image(image: np.ndarray) -> np.ndarray:
    """Mirror an HWC (or ...HWC) image left-right, to pair with :func:`flip_label`."""
    return np.ascontiguousarray(np.asarray(image)[..., :, ::-1, :])


def eg3d_pitch_from_elevation(pitch_deg):
    """avatar3d elevation (deg) -> the pitch angle (radians, about pi/2) EG3D's
    LookAtPoseSampler takes as ``vertical_mean - pi/2`` for the same camera height."""
    return -(math.pi / 2.0) * np.sin(np.radians(np.asarray(pitch_deg, dtype=np.float64)))


def project_points(points, label, resolution: int):
    """Project world points (N, 3) with one label into pixel coordinates.

    Returns (uv (N, 2) in pixels, x right / y down, origin at the top-left
    corner of the image; depth (N,) along the camera z axis).
    """
    c2w, k = split_label(label)
    w2c = np.linalg.inv(c2w)
    p = np.asarray(points, dtype=np.float64)
    cam = p @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv = (cam[:, :2] / z[:, None]) * np.array([k[0, 0], k[1, 1]]) + np.array([k[0, 2], k[1, 2]])
    return uv * resolution, z


@dataclass(frozen=True)
class CameraSampler:
    """Uniform views for data generation: yaw in ``yaw_range``, elevation in ``pitch_range`` (degrees)."""

    yaw_range: tuple[float, float] = (-180.0, 180.0)
    pitch_range: tuple[float, float] = (-30.0, 30.0)
    radius: float = EG3D_RADIUS
    pivot: tuple[float, float, float] = HEAD_PIVOT
    focal: float = EG3D_FOCAL

    def sample(self, rng: np.random.Generator, n: int | None = None):
        """-> (yaw, pitch, label (..., 25))."""
        yaw = rng.uniform(*self.yaw_range, size=n)
        pitch = rng.uniform(*self.pitch_range, size=n)
        return yaw, pitch, self.label(yaw, pitch)

    def label(self, yaw, pitch) -> np.ndarray:
        return camera_label(yaw, pitch, self.radius, self.pivot, self.focal)


def camera_rays(c, resolution: int):
    """World-space rays through pixel centres, row-major from the top row.

    c: torch tensor (B, 25). Returns (origins, directions), each (B, R*R, 3),
    directions unit length. Same pixel order as EG3D's RaySampler.
    """
    import torch  # heavy: the numpy-only paths (prompts, specs, the procedural painter) import this module

    b = c.shape[0]
    c2w = c[:, :16].reshape(b, 4, 4)
    k = c[:, 16:25].reshape(b, 3, 3)
    fx, fy, cx, cy = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
    centres = (torch.arange(resolution, device=c.device, dtype=c.dtype) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # v: rows (down), u: columns (right)
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    x = (u - cx[:, None]) / fx[:, None]
    y = (v - cy[:, None]) / fy[:, None]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, R*R, 3)
    d_world = d_cam @ c2w[:, :3, :3].transpose(1, 2)
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, :3, 3].expand_as(d_world)
    return origins, d_world
