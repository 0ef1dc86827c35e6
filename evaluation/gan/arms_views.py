"""One picture of several generators side by side: rows = yaws, columns = the same latents per generator.

    .venv/bin/python evaluation/gan/arms_views.py --out evaluation/gan/results/long_arms_views.png \
        labels=jobs/assets/gan_world/snapshot.safetensors \
        shuffled=outputs/world_s1_shuffled/world-s1-shuffled/network-snapshot-final.safetensors
"""
import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw

from avatar3d.evaluation.truth import MATCH_CAMERA, generator_views
from avatar3d.gan.snapshot import load_snapshot

YAWS = (0.0, 45.0, 90.0, 135.0, 180.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="+", help="NAME=SNAPSHOT")
    ap.add_argument("--out", required=True)
    ap.add_argument("--latents", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    panels = []
    for arm in args.arms:
        name, path = arm.split("=", 1)
        G = load_snapshot(path).generator
        z = torch.randn(args.latents, G.z_dim, generator=torch.Generator().manual_seed(args.seed))
        rows = [np.concatenate(list(generator_views(G, [y] * args.latents, [0.0] * args.latents, z=z,
                                                      condition=MATCH_CAMERA)[0]), axis=1)
                for y in YAWS]
        grid = Image.fromarray(np.concatenate(rows, axis=0))
        canvas = Image.new("RGB", (grid.width, grid.height + 14), "white")
        canvas.paste(grid, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), name, fill="black")
        panels.append(canvas)
    gap = 8
    out = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + gap
    out.resize((out.width * 2, out.height * 2), Image.NEAREST).save(args.out)
    print(f"wrote {args.out} (rows: yaw {', '.join(f'{y:g}' for y in YAWS)})")


if __name__ == "__main__":
    main()
