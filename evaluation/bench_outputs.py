"""What the evaluation outputs cost on one CPU thread: FID pieces, mesh extraction, turntable frames.

    OMP_NUM_THREADS=1 python evaluation/bench_outputs.py     # -> evaluation/results/bench_outputs.json

- Inception features (fid-helper's TorchScript network, clean-fid's resize): images/s;
- Frechet distance at 2048-d: clean-fid's sqrtm vs the eigh route (same value);
- mesh: density grid + marching cubes + colours for the ``tiny`` preset generator at 128^3 and 256^3;
- turntable: frames/s of the ``tiny`` preset (64 px output).

CPU time (``time.process_time``) is reported beside wall time: the machine is
shared and wall time mostly measures the neighbours.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    torch.set_num_threads(1)
    from avatar3d.evaluation.features import get_extractor
    from avatar3d.evaluation.fid import frechet_distance
    from avatar3d.evaluation.mesh import generator_mesh, seed_latent
    from avatar3d.evaluation.walk import turntable
    from avatar3d.gan import GANConfig, TriPlaneGenerator

    res = {"load_avg_1min": os.getloadavg()[0], "torch_threads": torch.get_num_threads()}
    ext = get_extractor("inception-fid-helper")
    imgs = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    ext(imgs[:2])  # warm-up (TorchScript profiling runs)
    _, w, c = timed(lambda: ext(imgs))
    res["inception_images_per_cpu_s"] = round(16 / c, 2)
    res["inception_images_per_wall_s"] = round(16 / w, 2)

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3000, 2048)), rng.normal(size=(3000, 2048)) * 1.1 + 0.05
    stats = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ref, w, c = timed(lambda: frechet_distance(*stats, method="clean-fid"))
    res["frechet_2048_clean_fid"] = {"value": ref, "wall_s": round(w, 2), "cpu_s": round(c, 2)}
    fast, w, c = timed(lambda: frechet_distance(*stats, method="eigh"))
    res["frechet_2048_eigh"] = {"value": fast, "wall_s": round(w, 2), "cpu_s": round(c, 2),
                                "rel_diff": abs(fast - ref) / ref}

    torch.manual_seed(0)
    G = TriPlaneGenerator(GANConfig.tiny()).eval().requires_grad_(False)
    ws = seed_latent(G, 0)
    with torch.no_grad():
        sig = G.sample_density(G.synthesize_planes(ws, "const"), torch.rand(1, 4096, 3) - 0.5).sigma
    iso = float(sig.median())  # an untrained generator: a level its field crosses
    for n in (128, 256):
        mesh, w, c = timed(lambda: generator_mesh(G, ws, resolution=n, iso=iso))
        res[f"mesh_{n}"] = {"wall_s": round(w, 2), "cpu_s": round(c, 2), "vertices": len(mesh.vertices),
                            "faces": len(mesh.faces), "watertight": bool(mesh.to_trimesh().is_watertight)}
    spin, w, c = timed(lambda: turntable(G, 0, frames=12))
    res["turntable_tiny_64px_frames_per_cpu_s"] = round(12 / c, 2)
    res["turntable_tiny_64px_frames_per_wall_s"] = round(12 / w, 2)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_outputs.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
