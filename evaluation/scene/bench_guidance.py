"""Guidance rendering speed on one core (the pose/depth stage, docs/method.md section 2).

Goal: well under 1 s per 512x512 view (openpose + depth + normal) on one CPU
core, so guidance is never the bottleneck next to a ControlNet forward pass.
Prints the head build time (once per process), then per-view times for each
size and kind set over ``--views`` random cameras (yaw in [-180, 180],
pitch in [-30, 30]).

    OMP_NUM_THREADS=1 python evaluation/scene/bench_guidance.py --views 16
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from avatar3d.scene.cameras import CameraSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()

    t0 = time.perf_counter()
    from avatar3d.scene.head import canonical_head

    head = canonical_head()
    build = time.perf_counter() - t0
    print(f"canonical head: {len(head.mesh.vertices)} vertices, {len(head.mesh.faces)} faces, built in {build:.2f} s")
    print(f"ray intersector: {type(head.intersector).__module__}")

    from avatar3d.scene.guidance import render_guidance

    render_guidance(np.asarray(CameraSampler().label(0.0, 0.0)), 64, head=head)  # import controlnet-aux, warm caches
    _, _, labels = CameraSampler().sample(np.random.default_rng(0), args.views)
    for size in args.sizes:
        for kinds in (("openpose",), ("openpose", "depth"), ("openpose", "depth", "normal")):
            times = []
            for label in labels:
                t = time.perf_counter()
                render_guidance(label, size, head=head, kinds=kinds)
                times.append(time.perf_counter() - t)
            times = np.array(times)
            print(f"{size}x{size} {'+'.join(kinds):24s} mean {times.mean() * 1e3:7.1f} ms  "
                  f"median {np.median(times) * 1e3:7.1f} ms  max {times.max() * 1e3:7.1f} ms  ({len(times)} views)")
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
