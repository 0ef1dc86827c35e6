"""Arrow schemas of the multi-view dataset (one row per image).

Spec columns (the plan, :class:`avatar3d.datagen.specs.SampleSpec`) plus what
generation adds: the PNG, its size and the ids of the models that painted it,
and the nullable truth columns (version 2), filled only by the procedural
painter (:mod:`avatar3d.datagen.procedural`), null for diffusion-painted rows:

* ``truth_camera`` (25 floats), ``truth_yaw``, ``truth_pitch``: the camera the
  image was really painted from (the ``camera`` column stays the requested one),
* ``truth_failure``: ``none`` | ``pose_error`` | ``janus`` | ``flip``,
* ``truth_identity``: the avatar's parameters as JSON
  (:class:`avatar3d.scene.avatar.AvatarIdentity`), so it can be re-rendered
  from any camera,
* ``truth_silhouette``: the avatar's mask at the painted camera (8-bit PNG).

Readers (the GAN's data loader, the EG3D export) rely on these names/types.
Shards record :data:`FORMAT_VERSION` in their schema metadata
(``avatar3d.dataset``); shards without it are version 1 (no truth columns).
"""
from __future__ import annotations

import pyarrow as pa

CAMERA_DIM = 25

SPEC_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("index", pa.int64()),
    ("seed", pa.int64()),
    ("style", pa.string()),
    ("view", pa.string()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("attributes", pa.string()),  # JSON object: category -> value
    ("guidance", pa.string()),  # openpose | depth | hybrid
    ("yaw", pa.float64()),
    ("pitch", pa.float64()),
    ("camera", pa.list_(pa.float64())),  # 25 floats, EG3D label
    ("fine_bin", pa.int64()),
    ("coarse_bin", pa.int64()),
])

GENERATED_FIELDS = [
    ("image_png", pa.binary()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("base_model", pa.string()),
    ("controlnets", pa.list_(pa.string())),  # in guidance order: openpose, depth
    ("lora", pa.string()),  # "" when none
]

TRUTH_FIELDS = [
    ("truth_camera", pa.list_(pa.float64())),
    ("truth_yaw", pa.float64()),
    ("truth_pitch", pa.float64()),
    ("truth_failure", pa.string()),
    ("truth_identity", pa.string()),
    ("truth_silhouette", pa.binary()),
]
TRUTH_COLUMNS = tuple(n for n, _ in TRUTH_FIELDS)

FORMAT_KEY = b"avatar3d.dataset"
FORMAT_VERSION = 2
KNOWN_VERSIONS = (1, 2)

ROW_SCHEMA = pa.schema(list(SPEC_SCHEMA) + [pa.field(n, t) for n, t in GENERATED_FIELDS + TRUTH_FIELDS],
                       metadata={FORMAT_KEY: str(FORMAT_VERSION).encode()})


def format_version(schema: pa.Schema) -> int:
    """The dataset format a shard's schema records (1 when it records none); ValueError when unreadable."""
    raw = (schema.metadata or {}).get(FORMAT_KEY)
    if raw is None:
        return 1
    try:
        return int(raw.decode())
    except ValueError:
        raise ValueError(f"dataset format {raw!r} is not a version number") from None
