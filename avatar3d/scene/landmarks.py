"""3D landmarks of the guidance head: names, order, file format (docs/method.md section 2).

A head carries 78 landmarks, always in this order:

* 8 OpenPose body points of the head and shoulders, in the order of their
  BODY_18 (COCO-18, as controlnet-aux draws them) indices::

      nose (0), neck (1), right_shoulder (2), left_shoulder (5),
      right_eye (14), left_eye (15), right_ear (16), left_ear (17)

* the 70 OpenPose face points ``face_00`` ... ``face_69``: the 68 iBUG/dlib
  points (0-16 jaw from the subject's right ear to the left, 17-21 right brow,
  22-26 left brow, 27-30 nose bridge, 31-35 nostrils, 36-41 right eye, 42-47
  left eye, 48-59 outer lips, 60-67 inner lips) then 68 = right pupil and
  69 = left pupil.

"Right" and "left" are the subject's: the subject faces +z with y up, so
their right side is at -x (it appears on image-left in a front view).

Landmark file (for a user's own mesh): JSON, either an object mapping every
name above to ``[x, y, z]`` or a list of 78 ``[x, y, z]`` in the order above,
in the mesh's own coordinates (the world frame of ``avatar3d.scene.cameras``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# name -> OpenPose BODY_18 index (controlnet-aux's draw_bodypose order).
BODY_18_INDEX = {
    "nose": 0,
    "neck": 1,
    "right_shoulder": 2,
    "left_shoulder": 5,
    "right_eye": 14,
    "left_eye": 15,
    "right_ear": 16,
    "left_ear": 17,
}
BODY_NAMES = tuple(BODY_18_INDEX)
NUM_BODY_18 = 18
NUM_FACE = 70
FACE_NAMES = tuple(f"face_{i:02d}" for i in range(NUM_FACE))
LANDMARK_NAMES = BODY_NAMES + FACE_NAMES
NUM_LANDMARKS = len(LANDMARK_NAMES)
FACE_SLICE = slice(len(BODY_NAMES), NUM_LANDMARKS)


@dataclass(frozen=True)
class Landmarks:
    """78 surface points (world units) and their outward unit normals, in LANDMARK_NAMES order."""

    positions: np.ndarray  # (78, 3) float64
    normals: np.ndarray  # (78, 3) float64, unit length

    def __post_init__(self):
        for field in ("positions", "normals"):
            value = np.asarray(getattr(self, field), dtype=np.float64)
            _check_array(value, field)
            object.__setattr__(self, field, value)

    def index(self, name: str) -> int:
        try:
            return LANDMARK_NAMES.index(name)
        except ValueError:
            raise ValueError(f"unknown landmark {name!r}; pass one of {', '.join(BODY_NAMES)} or face_00..face_69") from None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.positions[self.index(name)]


def _check_array(points: np.ndarray, field: str) -> None:
    if points.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"{field}: expected {NUM_LANDMARKS} points of [x, y, z] (shape ({NUM_LANDMARKS}, 3)), got shape {points.shape}")
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad.size:
        raise ValueError(f"{field}: landmark {LANDMARK_NAMES[bad[0]]!r} has a non-finite value {points[bad[0]].tolist()}; pass finite coordinates")


def parse_landmarks(data, source: str = "landmarks") -> np.ndarray:
    """JSON-like data (name -> [x, y, z] mapping, or a list in LANDMARK_NAMES order) -> (78, 3)."""
    if isinstance(data, dict):
        missing = [n for n in LANDMARK_NAMES if n not in data]
        unknown = [k for k in data if k not in LANDMARK_NAMES]
        if unknown:
            raise ValueError(f"{source}: unknown landmark name {unknown[0]!r}; names are {', '.join(BODY_NAMES)}, face_00..face_69")
        if missing:
            raise ValueError(f"{source}: missing landmark {missing[0]!r} ({len(missing)} of {NUM_LANDMARKS} missing); every name needs [x, y, z]")
        rows = [data[n] for n in LANDMARK_NAMES]
    elif isinstance(data, (list, tuple)):
        if len(data) != NUM_LANDMARKS:
            raise ValueError(f"{source}: expected a list of {NUM_LANDMARKS} [x, y, z] points, got {len(data)}")
        rows = list(data)
    else:
        raise ValueError(f"{source}: expected a JSON object (name -> [x, y, z]) or a list of {NUM_LANDMARKS} points, got {type(data).__name__}")
    points = np.full((NUM_LANDMARKS, 3), np.nan)
    for i, row in enumerate(rows):
        try:
            values = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: landmark {LANDMARK_NAMES[i]!r} is not numeric: {row!r}; pass [x, y, z]") from None
        if values.shape != (3,):
            raise ValueError(f"{source}: landmark {LANDMARK_NAMES[i]!r} must be [x, y, z], got {row!r}")
        points[i] = values
    _check_array(points, source)
    return points


def load_landmarks(path) -> np.ndarray:
    """Read a landmark JSON file -> (78, 3) positions. One-line ValueError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"landmarks file not found: {str(path)!r}; pass a JSON file of {NUM_LANDMARKS} [x, y, z] points")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"landmarks file {str(path)!r} is not valid JSON ({err.__class__.__name__}: {err})") from None
    return parse_landmarks(data, source=f"landmarks file {path.name}")


def save_landmarks(path, positions) -> Path:
    """Write positions (78, 3) as the name -> [x, y, z] JSON object :func:`load_landmarks` reads."""
    points = np.asarray(positions, dtype=np.float64)
    _check_array(points, "positions")
    path = Path(path)
    path.write_text(json.dumps({n: [float(v) for v in p] for n, p in zip(LANDMARK_NAMES, points)}, indent=1))
    return path
