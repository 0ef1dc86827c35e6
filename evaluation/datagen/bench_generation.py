"""Ray Data overhead of dataset generation: the tiny preset through Ray vs a plain loop.

Both paths make the same images (checked byte for byte) from the same specs
with the same code: guidance rendering, ControlNet pipeline, PNG encoding,
Parquet shards.

* plain loop: one process, pipeline built once, one warm-up batch, then
  timed batch after batch (per-stage times recorded);
* Ray Data: ``run_generation`` on a local Ray with one actor; throughput is
  measured warm, between the first and the last shard (``rows_per_file`` =
  the job's block of 4 batches, so one shard lands per block; the first
  block carries actor start-up and is excluded), plus the end-to-end wall
  time including actor start-up.

The plain loop runs before and after the Ray run and the mean is used: the
2-core machine is shared, so the load drifts between runs.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 \\
        python evaluation/datagen/bench_generation.py --n 96 --batch-size 8

Writes the numbers as JSON (``--out``) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_YAML = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "generate_tiny.yaml"


def make_config(args, output_dir):
    from avatar3d.config import load_config
    from avatar3d.datagen.job import GenerateConfig

    return load_config(GenerateConfig, str(TINY_YAML), [
        # One shard per Ray block (job.py streams blocks of 4 batches): shard times then mark block arrivals.
        f"num_samples={args.n}", f"batch_size={args.batch_size}", f"rows_per_file={4 * args.batch_size}",
        f"guidance_batch_size={args.batch_size}", f"resolution={args.resolution}", f"pipeline.steps={args.steps}",
        f"output_dir={output_dir}", "min_actors=1", "max_actors=1", "tracking.enabled=false",
        "progress_interval_s=1000000",
    ])


def plain_loop(cfg, warmup_batches: int = 1) -> dict:
    """The same stages, called directly in this process."""
    import numpy as np

    from avatar3d.datagen.job import _rows_for, encode_png, plan_specs, render_guidance_batch
    from avatar3d.datagen.pipeline import build_pipeline, generate_from_config
    from avatar3d.datagen.shards import ShardWriter

    specs = plan_specs(cfg)
    kinds = cfg.pipeline.controlnet_kinds
    pipe = build_pipeline(cfg.pipeline)
    model_ids = cfg.pipeline.model_ids()
    columns = specs.select(["id", "seed", "prompt", "negative_prompt", "camera"])
    b = cfg.batch_size
    batches = [columns.slice(i, b).to_pydict() for i in range(0, columns.num_rows, b)]
    batches = [{k: np.array(v, dtype=object) if k != "camera" else v for k, v in batch.items()} for batch in batches]

    def run(batch, writer, times):
        t0 = time.perf_counter()
        guided = render_guidance_batch(batch, cfg.resolution, kinds)
        t1 = time.perf_counter()
        images = generate_from_config(
            pipe, cfg.pipeline, list(guided["prompt"]), list(guided["negative_prompt"]),
            [list(guided[f"control_{k}"]) for k in kinds], [int(s) for s in guided["seed"]],
            cfg.resolution, cfg.resolution)
        t2 = time.perf_counter()
        pngs = [encode_png(im) for im in images]
        t3 = time.perf_counter()
        writer.add(_rows_for(specs, {"id": guided["id"], "image_png": pngs}, model_ids, cfg.resolution))
        t4 = time.perf_counter()
        for key, dt in zip(("guidance", "diffusion", "png", "parquet"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key] += dt
        return dict(zip(guided["id"], pngs))

    with tempfile.TemporaryDirectory() as scratch:
        warm_writer = ShardWriter(Path(scratch) / "warm", cfg.rows_per_file, "warm")
        for batch in batches[:warmup_batches]:
            run(batch, warm_writer, dict.fromkeys(("guidance", "diffusion", "png", "parquet"), 0.0))
        writer = ShardWriter(Path(scratch) / "timed", cfg.rows_per_file, "timed")
        times = dict.fromkeys(("guidance", "diffusion", "png", "parquet"), 0.0)
        pngs = {}
        start = time.perf_counter()
        for batch in batches:
            pngs.update(run(batch, writer, times))
        wall = time.perf_counter() - start
    n = len(pngs)
    return {"images": n, "wall_s": wall, "images_per_s": n / wall,
            "per_image_ms": {k: 1000 * v / n for k, v in times.items()}, "pngs": pngs}


def through_ray(cfg) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from avatar3d.datagen.job import run_generation
    from avatar3d.datagen.shards import read_dataset

    blocks: list[dict] = []
    start, start_wall = time.perf_counter(), time.time()
    result = run_generation(cfg, on_batch=blocks.append)
    wall = time.perf_counter() - start
    # Painter calls (one per batch) from their own wall-clock stamps. The warm
    # window opens when the first call ends (actor start-up, pipeline build and
    # the first head-mesh build are behind us) and closes when the last block
    # reaches the driver, so it contains every later call plus all of Ray's
    # scheduling, transfer and driver-side time.
    calls = {}
    for b in blocks:
        for s, e, g in zip(b["call_start"], b["call_end"], np.full(b["rows"], b["guidance_s"] / b["rows"])):
            c = calls.setdefault((float(s), float(e)), [0, 0.0])
            c[0] += 1
            c[1] += float(g)
    ordered = sorted(calls.items())
    (_, first_end), _ = ordered[0]
    window = max(b["arrival"] for b in blocks) - first_end
    later = [(s, e, rows, guidance) for (s, e), (rows, guidance) in ordered[1:]]
    steady_rows = sum(rows for *_, rows, _g in later)
    steady = steady_rows / window
    # Load-independent overhead: the actor's busy time in the window (painter
    # calls + the guidance rendering fused in front of them) against the window.
    busy = sum(e - s for s, e, *_ in later) + sum(g for *_, g in later)
    table = read_dataset(cfg.output_dir, columns=["id", "image_png"])
    pngs = dict(zip(table.column("id").to_pylist(), table.column("image_png").to_pylist()))
    shards = [pq.ParquetFile(p).metadata.num_rows for p in Path(cfg.output_dir, "shards").glob("*.parquet")]
    return {"images": result.num_rows, "wall_s_end_to_end": wall, "images_per_s_end_to_end": result.num_rows / wall,
            "steady_images": steady_rows, "steady_s": window, "images_per_s": steady,
            "worker_busy_s_in_window": busy, "idle_overhead_percent": 100.0 * (1.0 - busy / window),
            "blocks": len(blocks),
            "painter_calls": len(ordered), "time_to_first_output_s": first_end - start_wall,
            "per_image_ms_in_workers": {
                k: 1000 * v for k, v in result.timings["per_image_s"].items()},
            "max_rows_per_shard": max(shards), "pngs": pngs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=192, help="images per path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args(argv)

    import ray
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        loop_before = plain_loop(make_config(args, Path(tmp) / "loop"))
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            via_ray = through_ray(make_config(args, Path(tmp) / "ray"))
        finally:
            ray.shutdown()
        loop_after = plain_loop(make_config(args, Path(tmp) / "loop2"))

    same = loop_before.pop("pngs") == via_ray.pop("pngs") == loop_after.pop("pngs")
    loop = {
        "images_per_s": 0.5 * (loop_before["images_per_s"] + loop_after["images_per_s"]),
        "per_image_ms": {k: 0.5 * (loop_before["per_image_ms"][k] + loop_after["per_image_ms"][k])
                         for k in loop_before["per_image_ms"]},
        "before_ray": loop_before, "after_ray": loop_after,
    }
    ratio = via_ray["images_per_s"] / loop["images_per_s"]
    report = {
        "setup": {"preset": "tiny", "guidance": "hybrid", "n": args.n, "batch_size": args.batch_size,
                  "resolution": args.resolution, "steps": args.steps, "ray_cpus": args.ray_cpus, "actors": 1,
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
                  "torch_threads": 1},
        "plain_loop": loop,
        "ray_data": via_ray,
        "ray_over_loop_throughput_ratio": ratio,
        "ray_overhead_percent": 100.0 * (1.0 - ratio),
        "identical_png_bytes": same,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"plain loop : {loop['images_per_s']:.2f} images/s (mean of {loop_before['images_per_s']:.2f} before "
          f"and {loop_after['images_per_s']:.2f} after Ray; per image ms: "
          + ", ".join(f"{k} {v:.1f}" for k, v in loop["per_image_ms"].items()) + ")")
    print(f"Ray Data   : {via_ray['images_per_s']:.2f} images/s warm, {via_ray['images_per_s_end_to_end']:.2f} end to end "
          f"(first batch done {via_ray['time_to_first_output_s']:.1f} s after start; worker ms/image: "
          + ", ".join(f"{k} {v:.1f}" for k, v in via_ray["per_image_ms_in_workers"].items()) + ")")
    print(f"ratio Ray/loop = {ratio:.3f}  ->  Ray overhead {100 * (1 - ratio):+.1f}%   identical PNG bytes: {same}")
    print(f"actor busy {via_ray['worker_busy_s_in_window']:.1f} s of the {via_ray['steady_s']:.1f} s warm window "
          f"-> Ray idle overhead {via_ray['idle_overhead_percent']:.1f}% (load-independent)")
    print(f"written {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
