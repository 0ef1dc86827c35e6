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
from tests import CONFIGS
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


def write_procedural_dataset(folder, n=256, size=32, seed=0,
                             styles=("pixar", "anime", "clay_figurine", "bronze_statue"), rows_per_file=128):
    """A dataset of the procedural painter (jobs/configs/generate_procedural.yaml) written the way
    ``run_generation`` writes one, by the job's own pieces (``plan_specs`` -> ``ProceduralPainter`` ->
    ``_rows_for`` -> ``ShardWriter``) minus Ray: a local Ray for the real job costs ~35 s on 2 cores."""
    from avatar3d.config import load_config
    from avatar3d.datagen.job import GenerateConfig, _rows_for, plan_specs
    from avatar3d.datagen.procedural import ProceduralPainter

    cfg = load_config(GenerateConfig, CONFIGS / "generate_procedural.yaml", [
        f"output_dir={folder}", f"num_samples={n}", f"resolution={size}", f"styles=[{','.join(styles)}]",
        "tracking.enabled=false", f"seed={seed}", f"rows_per_file={rows_per_file}"])
    specs = plan_specs(cfg)
    batch = specs.select(["id", "seed", "index", "style", "attributes", "view", "yaw", "pitch", "camera"]).to_pydict()
    painted = ProceduralPainter(cfg.procedural, cfg.resolution)(batch)
    writer = ShardWriter(folder, rows_per_file=cfg.rows_per_file, run_tag="test")
    writer.add(_rows_for(specs, painted, cfg.pipeline.model_ids(), cfg.resolution))
    writer.flush()
    return str(folder)
