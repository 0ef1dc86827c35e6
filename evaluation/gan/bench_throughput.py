"""Throughput of the tri-plane GAN on CPU, one thread.

Measures, for the two reference configurations of the GAN issue (batch 4):
  * full training step (Gmain + Dmain, each with its optimiser step; no R1,
    no density regulariser, no EMA, no blur) in images/s;
  * generator forward only (no grad, eval mode: the render a consumer of a
    snapshot gets) in renders/s, and the same in training mode (as the D phase
    runs it) beside it in the JSON;
  * a torch.profiler breakdown of one training step (top ops);
rates are per CPU-second of this (single-threaded) process, the wall-clock
rates and the load average are recorded beside them (the machine is shared);
and the FLOPs per image of the `paper` preset's generator and discriminator
forward (counted with torch.utils.flop_counter on the meta device).

Reference (EG3D's own code, one thread of this machine type, same configs):
  A: 2.6 images/s full step, 12 renders/s G forward
  B: 0.26 images/s full step, 1.3 renders/s G forward

    OMP_NUM_THREADS=1 python evaluation/gan/bench_throughput.py [--configs A B] [--profile] [--processes 5]

This machine's speed drifts by 10-20% from one process to the next (a shared
VM), more than within a process; ``--processes K`` measures each config in K
fresh interpreters and reports the median and range of their medians.

Runs as training runs on CPU: the process enables the compiled CPU ops
(:func:`avatar3d.native.enable_training_ops`), which training-mode renders use
and eval-mode renders never do; ``AVATAR3D_NATIVE_OPS=0`` measures the
pure-PyTorch paths. The C allocator is whatever the process was started with
(``LD_PRELOAD``, ``GLIBC_TUNABLES``, ``MALLOC_CONF`` are recorded in the JSON);
the Makefile sets the recommended one (README, "Allocator").
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from avatar3d import native
from avatar3d.gan import GANConfig, GANTrainer, TriPlaneGenerator, build_discriminator
from avatar3d.scene.cameras import camera_label

REFERENCE = {"A": {"step": 2.6, "forward": 12.0}, "B": {"step": 0.26, "forward": 1.3}}
# (measured rate, reference it is compared with, name of the ratio)
RATIOS = (("images_per_s", "step", "speedup_step"), ("renders_per_s", "forward", "speedup_forward"),
          ("train_renders_per_s", "forward", "speedup_train_forward"))


def config(name: str) -> GANConfig:
    common = dict(z_dim=512, w_dim=512, r1_gamma=0.0, density_reg=0.0, blur_init_sigma=0.0,
                  neural_rendering_resolution_final=None, d_mapping_layers=8, sr_channels=(128, 64))
    if name == "A":
        return GANConfig(**common, neural_rendering_resolution=32, output_resolution=64, sr_input_resolution=32,
                         plane_resolution=64, channel_base=4096, channel_max=128, d_channel_base=4096,
                         d_channel_max=128, depth_samples=24, importance_samples=24)
    if name == "B":
        return GANConfig(**common, neural_rendering_resolution=64, output_resolution=128, sr_input_resolution=64,
                         plane_resolution=128, channel_base=8192, channel_max=256, d_channel_base=8192,
                         d_channel_max=256, depth_samples=48, importance_samples=48)
    raise ValueError(f"unknown config {name!r}: pass A or B")


def batch(cfg: GANConfig, n: int = 4):
    img = torch.rand(n, 3, cfg.output_resolution, cfg.output_resolution) * 2 - 1
    yaw = np.linspace(-150, 150, n)
    c = torch.tensor(camera_label(yaw, np.zeros(n)), dtype=torch.float32)
    return img, c


def time_it(fn, warmup: int, iters: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds of this process) per call.

    With one thread, CPU time is what the call costs on a core of its own; on a shared
    machine the wall time also counts the time other processes held the core.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def bench(name: str, iters: int, profile: bool) -> dict:
    torch.manual_seed(0)
    cfg = config(name)
    tr = GANTrainer(cfg, use_ema=False)
    img, c = batch(cfg)
    n = img.shape[0]
    step_s, step_cpu = time_it(lambda: tr.step(img, c), 1, iters)
    G = tr.G
    z = torch.randn(n, cfg.z_dim)

    def fwd():
        with torch.no_grad():
            G(z, c)

    G.eval()  # inference: the PyTorch path in every process
    fwd_s, fwd_cpu = time_it(fwd, 1, max(iters, 3))
    G.train()  # as the trainer's D phase runs it: the compiled ops where enabled
    train_fwd_s, train_fwd_cpu = time_it(fwd, 1, max(iters, 3))
    out = {"config": name, "batch": n,
           "step_wall_s": step_s, "step_cpu_s": step_cpu, "forward_wall_s": fwd_s, "forward_cpu_s": fwd_cpu,
           "train_forward_cpu_s": train_fwd_cpu,
           "images_per_s": n / step_cpu, "renders_per_s": n / fwd_cpu, "train_renders_per_s": n / train_fwd_cpu,
           "images_per_wall_s": n / step_s, "renders_per_wall_s": n / fwd_s,
           "load_avg_1min": os.getloadavg()[0], "reference": REFERENCE[name]}
    for key, ref, label in RATIOS:
        out[label] = out[key] / REFERENCE[name][ref]
    if profile:
        from torch.profiler import profile as prof
        with prof() as p:
            tr.step(img, c)
        out["profile"] = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return out


def paper_flops() -> dict:
    """FLOPs per image (forward) of the paper preset, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = GANConfig.paper()
    res = {}
    with torch.device("meta"):
        G = TriPlaneGenerator(cfg)
        D = build_discriminator(cfg)
        z, c = torch.randn(1, 512), torch.randn(1, 25)
        for nr in (64, 128):
            with FlopCounterMode(display=False) as fc:
                out = G(z, c, neural_rendering_resolution=nr)
            res[f"G_forward_nr{nr}_GFLOP"] = fc.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as fc:
            D(out.image, out.image_raw, torch.zeros(1, cfg.d_label_dim))
        res["D_forward_GFLOP"] = fc.get_total_flops() / 1e9
        # grid_sample, softplus, cumprod... are not counted by FlopCounterMode: add the
        # decoder-free part analytically (bilinear lookup: 3 planes x C x ~8 flops per point).
        for nr in (64, 128):
            pts = nr * nr * (cfg.depth_samples + cfg.importance_samples)
            res[f"G_grid_sample_nr{nr}_GFLOP"] = pts * 3 * cfg.plane_channels * 8 / 1e9
    return res


def in_fresh_processes(name: str, iters: int, processes: int) -> dict:
    """``bench(name)`` in ``processes`` new interpreters; median and range of their rates."""
    import subprocess
    import sys
    import tempfile

    runs = []
    for _ in range(processes):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "one.json"
            subprocess.run([sys.executable, __file__, "--configs", name, "--iters", str(iters), "--out", str(out),
                            "--no-flops"], check=True, stdout=subprocess.DEVNULL)
            runs.append(json.loads(out.read_text())["runs"][0])
    summary = {"config": name, "processes": processes, "reference": REFERENCE[name], "per_process": runs}
    for key, ref, label in RATIOS:
        vals = sorted(r[key] for r in runs)
        summary[key] = float(np.median(vals))
        summary[f"{key}_range"] = [vals[0], vals[-1]]
        summary[label] = summary[key] / REFERENCE[name][ref]
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["A", "B"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--processes", type=int, default=1, help="fresh interpreters per config (median reported)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-flops", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = ap.parse_args()
    if args.processes < 1 or args.iters < 1:
        raise SystemExit("bench_throughput: --processes and --iters take a whole number >= 1")
    torch.set_num_threads(1)
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__,
               "compiled_training_ops": native.enable_training_ops("cpu"),
               "allocator_env": {k: os.environ.get(k) for k in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_CONF")},
               "runs": []}
    for name in args.configs:
        if args.processes > 1:
            r = in_fresh_processes(name, args.iters, args.processes)
            print(json.dumps({k: v for k, v in r.items() if k != "per_process"}))
            results["runs"].append(r)
            continue
        r = bench(name, args.iters, args.profile)
        prof = r.pop("profile", None)
        print(json.dumps(r))
        if prof:
            print(prof)
            r["profile_top"] = prof
        results["runs"].append(r)
    if not args.no_flops:
        results["paper_flops_per_image"] = paper_flops()
        print(json.dumps(results["paper_flops_per_image"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
