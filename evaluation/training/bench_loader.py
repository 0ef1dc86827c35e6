"""Training input throughput: PNG decode + resize per CPU core, plain and through Ray Data.

train-gan decodes the dataset's PNGs in Ray Data's CPU tasks (``map_batches`` of
:func:`avatar3d.training.data.decode_images`, upstream of the workers' shards).
This measures how many images/s one CPU core feeds at 512 px:

1. the plain function on this process: CPU seconds per image (``time.process_time``),
2. the same function through Ray Data (``training_dataset`` of ``avatar3d.training.ray_fit``:
   ``read_parquet`` -> ``map_batches``, order preserved) on a Ray of 1 CPU, consumed by
   ``iter_batches`` on the driver as a worker would: images/s, wall clock,

on synthetic structured 512x512 PNGs (smooth shapes + multi-octave texture, the texture
amplitude calibrated so the dataset's own encoder, ``encode_png``, gives ``--png-kb`` per
image, the size of Stable Diffusion renders) and, for the resize path, 1024x1024 sources.

    OMP_NUM_THREADS=1 python evaluation/training/bench_loader.py
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def structured_image(size: int, seed: int, texture: float) -> np.ndarray:
    """HWC uint8: a smooth background, a few soft ellipses (a head-like layout) and texture of
    amplitude ``texture`` (octaves from 1/64 of the image to single pixels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    img += c0 * (1 - y[..., None]) + c1 * y[..., None]
    for _ in range(6):
        cx, cy, rx, ry = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.3), rng.uniform(0.08, 0.35)
        mask = np.clip(1.5 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0, 1)[..., None]
        img = img * (1 - mask) + rng.uniform(20, 235, 3) * mask
    for cells in (size // 64, size // 16, size // 4, size):
        grid = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(grid[..., k]).resize((size, size), Image.BICUBIC))
                          for k in range(3)], -1)
        img += texture * layer * (1.0 if cells < size else 0.35)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_pngs(n: int, size: int, target_kb: float) -> tuple[list[bytes], float]:
    """``n`` PNGs of ``size`` px whose mean size is about ``target_kb`` (texture found by bisection on 4)."""
    from avatar3d.datagen.dataset import encode_png

    def mean_kb(texture, k=4):
        return np.mean([len(encode_png(structured_image(size, 1000 + i, texture))) for i in range(k)]) / 1e3

    lo, hi = 0.0, 64.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_kb(mid) < target_kb else (lo, mid)
    texture = (lo + hi) / 2
    return [encode_png(structured_image(size, i, texture)) for i in range(n)], texture


def write_parquet(pngs: list[bytes], repeat: int, folder: Path) -> list[str]:
    """The PNGs (``repeat`` times over) as a Parquet file of the dataset's two training columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avatar3d.scene.cameras import CameraSampler

    rows = pngs * repeat
    _, _, labels = CameraSampler().sample(np.random.default_rng(0), len(rows))
    table = pa.table({"image_png": pa.array(rows, pa.binary()),
                      "camera": pa.array([l.tolist() for l in labels], pa.list_(pa.float64()))})
    path = folder / f"rows-{len(rows)}.parquet"
    pq.write_table(table, path, row_group_size=64)
    return [str(path)]


def bench_plain(pngs: list[bytes], resolution: int, passes: int, batch: int = 32) -> dict:
    """decode_images on this process, one core: CPU and wall seconds per image (best pass)."""
    from avatar3d.training.data import decode_images

    cams = [np.zeros(25)] * len(pngs)
    cpu, wall = [], []
    for _ in range(passes):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(0, len(pngs), batch):
            decode_images({"image_png": pngs[i:i + batch], "camera": cams[i:i + batch]}, resolution)
        cpu.append((time.process_time() - c0) / len(pngs))
        wall.append((time.perf_counter() - w0) / len(pngs))
    return {"cpu_ms_per_image": 1e3 * min(cpu), "wall_ms_per_image": 1e3 * min(wall),
            "images_per_s_per_core": 1.0 / min(cpu), "passes_cpu_ms": [round(1e3 * c, 2) for c in cpu]}


def bench_ray(files: list[str], resolution: int | None, passes: int, batch: int = 32) -> dict:
    """Ray Data on the Ray started by the caller: read_parquet (-> map_batches(decode_images) when
    ``resolution``), iter_batches on the driver, after a warm-up pass (it starts Ray's worker processes).
    Per pass: images/s end to end (the start-up of each execution included), and the tasks' CPU seconds per
    image (Ray Data's stats: read + decode, all operators; load-independent, unlike the wall clock)."""
    from avatar3d.training.data import decode_images
    from avatar3d.training.ray_fit import RowTransform, training_dataset

    transform = None
    if resolution is not None:
        transform = RowTransform(functools.partial(decode_images, resolution=resolution), batch_size=batch, num_cpus=1)
    total, cpu = [], []
    for k in range(passes + 1):
        ds = training_dataset(files, ["image_png", "camera"], None, transform)
        t0, n = time.perf_counter(), 0
        for rows in ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=False):
            column = rows["image"] if resolution is not None else rows["image_png"]
            if resolution is not None:
                assert column.dtype == np.uint8 and column.shape[1:] == (resolution, resolution, 3)
            n += len(column)
        if k:
            total.append(n / (time.perf_counter() - t0))
            cpu.append(_remote_cpu_s(ds.stats()) / n)
    return {"images_per_s_median": statistics.median(total), "task_cpu_ms_per_image_median": 1e3 * statistics.median(cpu),
            "passes_images_per_s": [round(r, 1) for r in total], "passes_task_cpu_ms": [round(1e3 * c, 2) for c in cpu],
            "rows": n}


def _remote_cpu_s(stats: str) -> float:
    """Sum of the operators' "Remote cpu time: ... <x> total" lines of Ray Data's stats text, in seconds."""
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
    found = re.findall(r"Remote cpu time: .* ([0-9.]+)(s|ms|us) total", stats)
    return sum(float(v) * scale[u] for v, u in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="distinct PNGs per source size")
    parser.add_argument("--repeat", type=int, default=6, help="the Ray dataset holds the PNGs this many times")
    parser.add_argument("--png-kb", type=float, default=400.0, help="target PNG size at 512 px")
    parser.add_argument("--passes", type=int, default=2, help="timed passes (plain: best; Ray: median)")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = parser.parse_args()

    import ray

    from avatar3d.datagen.dataset import encode_png
    from avatar3d.runtime import apply_local_defaults

    apply_local_defaults()
    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    res = args.resolution
    sources = {}
    t0 = time.time()
    pngs, texture = make_pngs(args.images, res, args.png_kb)
    sources[f"{res} px PNG -> {res} (decode)"] = pngs
    # The same recipe at twice the size (no new calibration): decode + Lanczos resize to the training size.
    sources[f"{2 * res} px PNG -> {res} (decode + resize)"] = [encode_png(structured_image(2 * res, i, texture))
                                                              for i in range(args.images)]
    print(f"made PNGs in {time.time() - t0:.0f} s (texture {texture:.2f})", flush=True)

    report = {"cpu": os.cpu_count(), "load_avg_start": os.getloadavg(), "texture": texture, "rows": []}
    for name, data in sources.items():
        kb = [len(b) / 1e3 for b in data]
        row = {"source": name, "png_kb_mean": float(np.mean(kb)), "png_kb_min": float(min(kb)),
               "png_kb_max": float(max(kb)), "plain": bench_plain(data, res, args.passes)}
        print(json.dumps(row), flush=True)
        report["rows"].append(row)

    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        for row, data in zip(report["rows"], sources.values()):
            folder = work / row["source"].split()[0]
            folder.mkdir()
            files = write_parquet(data, args.repeat, folder)
            row["ray_decode"] = bench_ray(files, res, args.passes)
            row["ray_read_only"] = bench_ray(files, None, args.passes)  # the same rows, PNG bytes undecoded
            print(json.dumps({k: row[k] for k in ("source", "ray_decode", "ray_read_only")}), flush=True)
    finally:
        ray.shutdown()
    report["load_avg_end"] = os.getloadavg()

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("| source | PNG KB (mean) | plain: CPU ms/img | plain: img/s/core | Ray Data, 1 CPU: img/s end to end "
          "| task CPU ms/img | read only: img/s |")
    for row in report["rows"]:
        ray_row, read = row["ray_decode"], row["ray_read_only"]
        print(f"| {row['source']} | {row['png_kb_mean']:.0f} | {row['plain']['cpu_ms_per_image']:.1f} | "
              f"{row['plain']['images_per_s_per_core']:.0f} | {ray_row['images_per_s_median']:.1f} | "
              f"{ray_row['task_cpu_ms_per_image_median']:.1f} | "
              f"{read['images_per_s_median']:.1f} |")


if __name__ == "__main__":
    main()
