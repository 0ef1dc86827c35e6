"""The generation job's driver ceiling: its CPU seconds and bytes per row with a painter that costs nothing.

A stand-in painter (``PremadePainter``) returns pre-made 512x512 PNG bytes of a
realistic Stable Diffusion size (noisy but structured, ~0.4 MB each) for every
row, so everything the job does besides painting remains: the Ray Data plan,
the actor pool, moving blocks, joining rows with the specs, Parquet shards,
resume bookkeeping, the card. On 2 shared cores rows/s measures the machine;
the driver's CPU seconds per row do not: ``1 / driver_cpu_s_per_row`` is the
most rows/s one driver can take, however many GPUs paint (the job records
them in its timings: ``time.process_time()`` of the driver process, all its
threads, around the generation loop only; Ray start-up and spec planning are
outside it).

It also reports the shard bytes written and, where the workers write the
shards, the storage MB/s they saw (bytes / seconds inside the write calls).

    OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 \\
        .venv/bin/python evaluation/datagen/bench_driver.py --n 3000 --rows-per-file 250

Writes JSON (``--out``) and prints one line per run.
"""
from __future__ import annotations

import argparse
import io
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


def premade_pngs(resolution: int = 512, count: int = 4, seed: int = 0) -> list[bytes]:
    """Noisy-but-structured RGB PNGs (smooth shapes and gradients plus sensor-like noise), sized like a
    512 px SD 1.5 image (~0.35-0.45 MB with PIL's default zlib level)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:resolution, 0:resolution] / resolution
    out = []
    for _ in range(count):
        image = np.zeros((resolution, resolution, 3))
        for c in range(3):  # low-frequency structure: gradients and a few soft blobs
            image[..., c] = 0.3 + 0.4 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
        for _ in range(6):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
            image += blob[..., None] * rng.uniform(-0.4, 0.4, 3)
        image = image * 255 + rng.normal(0.0, 4.0, image.shape)  # texture / noise, as a diffusion image has
        data = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(data).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def unique_png(png: bytes, row_id: str) -> bytes:
    """The pre-made PNG with the row's id in a tEXt chunk before IEND: every row's bytes differ, as real images
    do (four repeated values would let Parquet dictionary-encode the column and write ~60x fewer bytes)."""
    import struct
    import zlib

    body = b"tEXt" + b"id\0" + row_id.encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]


class PremadePainter:
    """Stand-in for the painter actor: the same output columns, PNG bytes made once, no painting."""

    def __init__(self, options=None, resolution: int = 512):
        self.pngs = premade_pngs(resolution)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        start = time.time()
        n = len(batch["id"])
        return {
            "id": batch["id"],
            "image_png": np.array([unique_png(self.pngs[int(i) % len(self.pngs)], str(i)) for i in batch["id"]],
                                  dtype=object),
            "guidance_s": np.zeros(n), "diffusion_s": np.zeros(n), "png_s": np.zeros(n),
            "call_start": np.full(n, start), "call_end": np.full(n, time.time()),
        }


def make_config(args, output_dir):
    from avatar3d.config import load_config
    from avatar3d.datagen.job import GenerateConfig

    return load_config(GenerateConfig, str(TINY_YAML), [
        f"num_samples={args.n}", f"batch_size={args.batch_size}", f"rows_per_file={args.rows_per_file}",
        f"resolution={args.resolution}", "pipeline.preset=procedural", "styles=[pixar,anime]",
        f"output_dir={output_dir}", "min_actors=1", f"max_actors={args.actors}", "cpus_per_actor=1",
        "tracking.enabled=false", "progress_interval_s=1000000", f"shard_writer={args.shard_writer}",
    ])


def run_once(args, output_dir) -> dict:
    import pyarrow.parquet as pq

    from avatar3d.datagen import job
    from avatar3d.datagen.dataset import dataset_files

    job.ProceduralPainter = PremadePainter  # the procedural path has no guidance stage: the painter is all
    if args.numpy_blocks:  # A/B: blocks reach the driver as numpy (every PNG a Python bytes copy), as before
        import ray.data

        original = getattr(ray.data.Dataset.iter_batches, "__wrapped_by_bench__", ray.data.Dataset.iter_batches)

        def as_numpy(self, **kwargs):
            return original(self, **{**kwargs, "batch_format": "numpy"})

        as_numpy.__wrapped_by_bench__ = original
        ray.data.Dataset.iter_batches = as_numpy
        job._driver_batch = lambda batch: batch
    cfg = make_config(args, output_dir)
    start = time.perf_counter()
    result = job.run_generation(cfg)
    wall = time.perf_counter() - start
    t = result.timings
    fs, files = dataset_files(result.output_dir)
    shard_bytes = sum(fs.get_file_info(f).size for f in files)
    rows = sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)
    out = {
        "rows": rows, "generated": result.generated, "shards": len(files),
        "driver_cpu_s": t["driver_cpu_s"], "driver_cpu_s_per_row": t["driver_cpu_s_per_row"],
        "driver_ceiling_rows_per_s": 1.0 / t["driver_cpu_s_per_row"],
        "driver_bytes_per_row": t["driver_bytes_per_row"],
        "shard_bytes_per_row": shard_bytes / rows,
        "generation_wall_s": t["generation_wall_s"], "rows_per_s_on_this_machine": t["images_per_s"],
        "wall_s_end_to_end": wall,
    }
    if t.get("write_s"):  # shards written by the workers: storage throughput inside their write calls
        out["worker_write_s"] = t["write_s"]
        out["storage_mb_per_s_in_writes"] = shard_bytes / 1e6 / t["write_s"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="rows per run")
    parser.add_argument("--rows-per-file", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="a folder or s3:// prefix (default: a temporary folder)")
    parser.add_argument("--numpy-blocks", action="store_true",
                        help="A/B: hand blocks to the driver as numpy, as the job did before (PNGs as Python bytes)")
    parser.add_argument("--shard-writer", choices=["driver", "workers"], default="driver",
                        help="who writes the shards (the job's shard_writer)")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_driver.json")))
    args = parser.parse_args(argv)

    import ray

    pngs = premade_pngs(args.resolution)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                where = f"{args.output_dir.rstrip('/')}/run{i}" if args.output_dir else str(Path(tmp) / f"run{i}")
                runs.append(run_once(args, where))
                r = runs[-1]
                print(f"run {i}: {r['rows']} rows, driver {1e3 * r['driver_cpu_s_per_row']:.3f} CPU ms/row "
                      f"-> ceiling {r['driver_ceiling_rows_per_s']:.0f} rows/s; {r['driver_bytes_per_row'] / 1e3:.1f} "
                      f"kB/row through the driver; {r['rows_per_s_on_this_machine']:.0f} rows/s on this machine"
                      + (f"; workers wrote {r['storage_mb_per_s_in_writes']:.0f} MB/s" if "worker_write_s" in r else ""),
                      flush=True)
    finally:
        ray.shutdown()
    report = {
        "label": args.label,
        "setup": {"n": args.n, "shard_writer": args.shard_writer, "rows_per_file": args.rows_per_file, "batch_size": args.batch_size,
                  "resolution": args.resolution, "actors": args.actors, "ray_cpus": args.ray_cpus,
                  "png_bytes": [len(p) for p in pngs],
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "runs": runs,
        "driver_cpu_s_per_row_median": sorted(r["driver_cpu_s_per_row"] for r in runs)[len(runs) // 2],
    }
    report["driver_ceiling_rows_per_s"] = 1.0 / report["driver_cpu_s_per_row_median"]
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"PNG sizes {[len(p) for p in pngs]} bytes; driver ceiling {report['driver_ceiling_rows_per_s']:.0f} "
          f"rows/s (median); written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
