"""Sample specs: everything about an image except its pixels (docs/method.md section 2).

A spec is one row of the dataset before generation: id, seed, style, prompt,
negative prompt, attributes, guidance type, camera (yaw, pitch, the 25-float
EG3D label) and the fine / coarse pose bins. Specs are drawn first, for the
whole dataset, and persisted beside the shards: they are the plan the Ray job
executes and what resume compares against.

Spec ``i`` is a function of ``(seed, i)`` only (it comes from
:func:`avatar3d.prompts.sample_prompts`, which draws each sample from its own
generator), and styles go round-robin, so N samples cover the styles evenly
and a dataset can be extended from N to M > N without changing the first N.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa

from avatar3d.datagen.schema import SPEC_SCHEMA
from avatar3d.prompts import sample_prompts
from avatar3d.scene.cameras import CameraSampler
from avatar3d.scene.pose_bins import PoseBins

ID_WIDTH = 8


def sample_id(index: int) -> str:
    """Row id: the zero-padded sample index (sorts like the index, stable across runs)."""
    return f"{index:0{ID_WIDTH}d}"


@dataclass(frozen=True)
class SampleSpec:
    """One planned image. ``attributes`` is a JSON object string (category -> value)."""

    id: str
    index: int
    seed: int
    style: str
    view: str
    prompt: str
    negative_prompt: str
    attributes: str
    guidance: str
    yaw: float
    pitch: float
    camera: list[float]  # 25 floats: cam2world (16, row-major) + normalised intrinsics (9)
    fine_bin: int
    coarse_bin: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def attributes_dict(self) -> dict[str, str]:
        return json.loads(self.attributes)


SPEC_COLUMNS = tuple(f.name for f in fields(SampleSpec))


def sample_specs(
    num_samples: int,
    seed: int,
    guidance: str,
    styles=None,
    attributes=None,
    num_attributes: int = 5,
    camera_sampler: CameraSampler | None = None,
    pose_bins: PoseBins | None = None,
    start: int = 0,
) -> list[SampleSpec]:
    """Specs ``start .. start + num_samples - 1`` of the dataset with master ``seed``.

    ``styles`` / ``attributes``: whatever :func:`avatar3d.prompts.load_styles` /
    ``load_attributes`` take (None = the built-ins).
    """
    sampler = camera_sampler or CameraSampler()
    bins = pose_bins or PoseBins()
    prompts = sample_prompts(num_samples, seed, styles=styles, attributes=attributes,
                             camera_sampler=sampler, k=num_attributes, start=start)
    if not prompts:
        return []
    yaw = np.array([p.yaw for p in prompts], dtype=np.float64)
    pitch = np.array([p.pitch for p in prompts], dtype=np.float64)
    # Vectorised: one label / bin computation for the whole set.
    labels = sampler.label(yaw, pitch)
    fine = bins.fine_index(yaw, pitch)
    coarse = bins.coarse_index(yaw, pitch)
    return [
        SampleSpec(
            id=sample_id(p.index), index=p.index, seed=p.seed, style=p.style, view=p.view,
            prompt=p.prompt, negative_prompt=p.negative_prompt,
            attributes=json.dumps(p.attributes, sort_keys=False, ensure_ascii=False),
            guidance=guidance, yaw=p.yaw, pitch=p.pitch, camera=labels[i].tolist(),
            fine_bin=int(fine[i]), coarse_bin=int(coarse[i]),
        )
        for i, p in enumerate(prompts)
    ]


def specs_to_table(specs: list[SampleSpec]):
    """Specs -> a pyarrow Table with the dataset's spec columns and types."""
    columns = {name: [getattr(s, name) for s in specs] for name in SPEC_COLUMNS}
    return pa.Table.from_pydict(columns, schema=SPEC_SCHEMA)


def table_to_specs(table) -> list[SampleSpec]:
    return [SampleSpec(**{k: row[k] for k in SPEC_COLUMNS}) for row in table.select(list(SPEC_COLUMNS)).to_pylist()]
