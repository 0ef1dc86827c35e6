"""Arrow schemas of the multi-view dataset (one row per image).

Spec columns (the plan, :class:`avatar3d.datagen.specs.SampleSpec`) plus what
generation adds: the PNG, its size and the ids of the models that painted it.
Readers (the GAN's data loader, the EG3D export) rely on these names/types.
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

ROW_SCHEMA = pa.schema(list(SPEC_SCHEMA) + [pa.field(n, t) for n, t in GENERATED_FIELDS])
