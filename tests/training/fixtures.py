"""A tiny multi-view dataset in the generator's Parquet schema, for training tests.

Images are normal maps of the canonical head (tinted per sample) rendered
from the stored cameras: real multi-view structure, made in well under a
second, no diffusion needed. Written through the same ShardWriter as
``avatar3d generate``.
"""
import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image

from avatar3d.datagen.schema import ROW_SCHEMA, TRUTH_COLUMNS
from avatar3d.datagen.shards import ShardWriter
from avatar3d.scene.cameras import CameraSampler
from avatar3d.scene.guidance import render_guidance
from avatar3d.scene.pose_bins import PoseBins, view_group

# A GAN small enough for a few CPU steps per test (same structure as the presets).
MICRO_GAN = dict(z_dim=32, w_dim=32, plane_resolution=16, channel_base=512, channel_max=32,
                 neural_rendering_resolution=16, output_resolution=32, sr_input_resolution=16,
                 depth_samples=8, importance_samples=8, sr_channels=[16, 16], d_channel_base=512,
                 d_channel_max=32, d_mapping_layers=2, blur_fade_kimg=0.05, gpc_fade_kimg=0.05, ema_kimg=0.01)


def write_head_dataset(folder, n=16, size=32, seed=0, rows_per_file=8):
    rng = np.random.default_rng(seed)
    yaw, pitch, labels = CameraSampler().sample(rng, n)
    bins = PoseBins()
    rows = {name: [] for name in ROW_SCHEMA.names}
    for i in range(n):
        normal = np.asarray(render_guidance(labels[i], size, kinds=("normal",)).normal, dtype=np.float32)
        tint = rng.uniform(0.4, 1.0, 3)
        buf = io.BytesIO()
        Image.fromarray((normal * tint).astype(np.uint8)).save(buf, format="PNG")
        values = dict(id=f"{i:08d}", index=i, seed=int(rng.integers(2**31)), style="test", view=view_group(yaw[i]),
                      prompt="", negative_prompt="", attributes=json.dumps({}), guidance="depth",
                      yaw=float(yaw[i]), pitch=float(pitch[i]), camera=labels[i].tolist(),
                      fine_bin=int(bins.fine_index(yaw[i], pitch[i])), coarse_bin=int(bins.coarse_index(yaw[i], pitch[i])),
                      image_png=buf.getvalue(), width=size, height=size, base_model="test", controlnets=[], lora="")
        for key, value in values.items():
            rows[key].append(value)
    for name in TRUTH_COLUMNS:  # canonical-head renders know no avatar identity
        rows[name] = [None] * n
    writer = ShardWriter(folder, rows_per_file=rows_per_file, run_tag="test")
    writer.add(pa.table(rows, schema=ROW_SCHEMA))
    writer.flush()
    return folder


def write_world_dataset(folder, n=256, size=32, seed=0, styles=("pixar", "anime", "clay_figurine", "bronze_statue"),
                        rows_per_file=128, options=None):
    """A dataset of the procedural painter written in-process (no Ray): the specs and truth columns of
    ``avatar3d generate`` with ``pipeline.preset=procedural``, for learning tests at a few seconds' cost."""
    from avatar3d.datagen.dataset import encode_png
    from avatar3d.datagen.procedural import PAINTER_ID, ProceduralOptions, encode_mask, paint, plan_paint
    from avatar3d.datagen.specs import sample_specs
    from avatar3d.prompts import load_styles

    options = options or ProceduralOptions()
    chosen = [s for s in load_styles() if s.name in styles]
    specs = sample_specs(n, seed, "hybrid", styles=chosen)
    rows = {name: [] for name in ROW_SCHEMA.names}
    for spec in specs:
        plan = plan_paint(spec.seed, spec.index, spec.style, spec.attributes_dict, spec.view, spec.yaw, spec.pitch,
                          options)
        render, label = paint(plan, np.asarray(spec.camera), size)
        values = dict(spec.to_dict(), image_png=encode_png(render.image), width=size, height=size,
                      base_model=PAINTER_ID, controlnets=[], lora="", truth_camera=label.tolist(),
                      truth_yaw=plan.yaw, truth_pitch=plan.pitch, truth_failure=plan.failure,
                      truth_identity=plan.identity.to_json(), truth_silhouette=encode_mask(render.mask))
        for key in ROW_SCHEMA.names:
            rows[key].append(values[key])
    writer = ShardWriter(folder, rows_per_file=rows_per_file, run_tag="world")
    writer.add(pa.table(rows, schema=ROW_SCHEMA))
    writer.flush()
    return folder
