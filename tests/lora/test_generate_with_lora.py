"""The dataset job paints the character: ``pipeline.lora=models:/...`` on a local Ray, end to end, 4 rows.

The job uses the styles file lora-train writes (its style carries the token)
and openpose guidance. Its rows are then painted again in this process, from
their stored prompt, seed and camera, with the LoRA (must give the same PNG
bytes: the Ray actors really loaded it) and without it (must differ).
"""
import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from avatar3d.config import load_config  # noqa: E402
from avatar3d.datagen.job import GenerateConfig, run_generation  # noqa: E402
from avatar3d.datagen.shards import read_dataset  # noqa: E402
from tests.lora.conftest import REPO, TOKEN  # noqa: E402

GENERATE_TINY = REPO / "jobs" / "configs" / "generate_tiny.yaml"
N = 4


@pytest.fixture(scope="module")
def ray_with_registry(tiny_lora, lora_cache_dir):
    """Local Ray whose workers see the LoRA's MLflow store (as a cluster job would via runtime_env)."""
    import ray

    _, _, uri = tiny_lora
    env = {"MLFLOW_TRACKING_URI": uri, "AVATAR3D_CACHE_DIR": str(lora_cache_dir)}
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the driver checks the URI before any work
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": env})
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def _generate(out, result, *extra):
    cfg = load_config(GenerateConfig, GENERATE_TINY, [
        f"output_dir={out}", f"num_samples={N}", "guidance=openpose", "resolution=32", "rows_per_file=4",
        "batch_size=2", "styles=null", f"styles_file={result.lora_dir / 'styles.yaml'}", "tracking.enabled=false",
        "progress_interval_s=0", *extra])
    run = run_generation(cfg)
    assert run.num_rows == run.generated == N
    return cfg, read_dataset(out).sort_by("index")


def _repaint(table, pipeline_cfg, resolution=32):
    """Paint the rows again in this process, through the job's own guidance and painter code."""
    from avatar3d.datagen.job import ControlNetPainter, render_guidance_batch

    batch = {name: np.array(table.column(name).to_pylist(), dtype=object)
             for name in ("id", "seed", "prompt", "negative_prompt")}
    batch["camera"] = [np.asarray(c) for c in table.column("camera").to_pylist()]
    guided = render_guidance_batch(batch, resolution, pipeline_cfg.controlnet_kinds)
    return list(ControlNetPainter(pipeline_cfg, resolution)(guided)["image_png"])


def test_generate_job_paints_with_the_registered_lora(ray_with_registry, tiny_lora, tmp_path):
    from dataclasses import replace

    _, result, _ = tiny_lora
    cfg, table = _generate(tmp_path / "lora", result, f"pipeline.lora={result.lora_uri}")
    assert table.column("lora").to_pylist() == [result.lora_uri] * N
    assert all(TOKEN in p for p in table.column("prompt").to_pylist())
    stored = table.column("image_png").to_pylist()
    assert _repaint(table, cfg.pipeline) == stored
    without = _repaint(table, replace(cfg.pipeline, lora=None))
    assert all(a != b for a, b in zip(without, stored))
