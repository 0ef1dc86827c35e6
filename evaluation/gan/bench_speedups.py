"""What each CPU speed-up of the tri-plane GAN buys, measured in one process.

The development machine's speed drifts by 10-20% between processes (a shared
VM), so comparing separate runs hides effects of that size. Here every variant
runs in the same process, interleaved round by round, and the median per-call
CPU time of each is reported; a variant turns ONE speed-up off:

  all on             the default of a CPU training process
  no native lookup   AVATAR3D_NATIVE_OPS=0 (grid_sample lookup, ATen softplus)
  no channels-last   AVATAR3D_CHANNELS_LAST=0 (NCHW convolutions)

The forward is the generator's in training mode, no grad (as the D phase runs
it): the compiled ops serve training-mode renders only. The allocator is chosen
when the process starts, so its effect is measured across processes instead
(``bench_allocators.py``).

    OMP_NUM_THREADS=1 python evaluation/gan/bench_speedups.py --configs A B --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from avatar3d import native
from avatar3d.gan import GANTrainer

try:  # run as a script from the repository root or from this folder
    from bench_throughput import batch, config
except ImportError:  # pragma: no cover
    from evaluation.gan.bench_throughput import batch, config

VARIANTS = {
    "all on": {},
    "no native lookup": {"AVATAR3D_NATIVE_OPS": "0"},
    "no channels-last": {"AVATAR3D_CHANNELS_LAST": "0"},
}


def _apply(variant: dict) -> None:
    for key in ("AVATAR3D_NATIVE_OPS", "AVATAR3D_CHANNELS_LAST"):
        os.environ[key] = variant.get(key, "1")


def bench(name: str, rounds: int) -> dict:
    torch.manual_seed(0)
    cfg = config(name)
    tr = GANTrainer(cfg, use_ema=False)
    img, c = batch(cfg)
    z = torch.randn(img.shape[0], cfg.z_dim)

    def forward():
        with torch.no_grad():
            tr.G(z, c)

    calls = {"step": lambda: tr.step(img, c), "forward": forward}
    times = {(v, k): [] for v in VARIANTS for k in calls}
    for _ in range(rounds):
        for v, variant in VARIANTS.items():
            _apply(variant)
            for k, fn in calls.items():
                fn()  # warm: first call after a switch refills caches
                t = time.process_time()
                fn()
                times[(v, k)].append(time.process_time() - t)
    _apply({})
    n = img.shape[0]
    out = {"config": name, "batch": n, "rounds": rounds, "variants": {}}
    base = {k: sorted(times[("all on", k)])[rounds // 2] for k in calls}
    for v in VARIANTS:
        row = {}
        for k in calls:
            med = sorted(times[(v, k)])[rounds // 2]
            row[f"{k}_cpu_s"] = med
            row[f"{k}_per_s"] = n / med
            row[f"{k}_cost_vs_all_on"] = med / base[k]
        out["variants"][v] = row
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["A", "B"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speedups.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not native.enable_training_ops("cpu"):
        raise SystemExit("bench_speedups: the compiled CPU code is off or failed to build; nothing to compare")
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "runs": []}
    for name in args.configs:
        r = bench(name, args.rounds)
        for v, row in r["variants"].items():
            print(f"{name} {v:18s} step {row['step_per_s']:6.3f} img/s (x{row['step_cost_vs_all_on']:.2f} time)   "
                  f"forward {row['forward_per_s']:6.2f} renders/s (x{row['forward_cost_vs_all_on']:.2f} time)")
        results["runs"].append(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
