"""Can the generator paint the world's outlines at all? Latents fitted to held-out identities' silhouettes.

``silhouette_gap.py`` (step 9) finds that a generator's *sampled* outlines fit the identity nearest to them at
about 0.88 at every camera, against 0.95 for truth identities outside the world. This script asks whether that
is the generator's range or its sampling. For the first ``--identities`` held-out identities of the truth world
(``TruthOptions`` defaults, truth seed 0), it starts one latent per identity at the mean w and moves it by Adam
on the binary cross-entropy between the generator's accumulated opacity and the identity's silhouette
(area-pooled to the neural rendering resolution) at the ``--fit`` cameras; then it scores every camera the way
the truth metrics do (opacity > 0.5, nearest upsampling to the output size, IoU), beside the mean silhouette's
IoU on the same identities.

- ``--fit front,left,right,back``: the range. If the fitted outlines beat the mean silhouette, the synthesis
  network can paint them and what falls short is what the mapping samples.
- ``--fit front``: the 3D prior. The front outline is given; what the generator puts at the other cameras
  is its own guess (an image-to-avatar question).
- ``--space w`` (one w per identity, the generator's range) or ``wplus`` (one per synthesis layer, looser).

    .venv/bin/python evaluation/gan/outline_range.py --data outputs/world_s1 --heldout-attributes none \\
        --snapshot jobs/assets/gan_world/snapshot.safetensors --fit front,left,right,back --space w \\
        --out evaluation/gan/results/outline_range_w_all.json

150 steps for 8 identities: about 4.5 min with the front alone and 15 min with four cameras, three runs at a
time on this machine's 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatar3d.evaluation.options import TruthOptions, add_heldout_attributes_argument
from avatar3d.evaluation.truth import (HELDOUT_CAMERAS, MATCH_CAMERA, TruthWorld, iou, mean_silhouette,
                                       synthesis_with_masks)
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.runtime import cache_dir
from avatar3d.scene.cameras import camera_label

CAMERAS = {"front": MATCH_CAMERA, **HELDOUT_CAMERAS}


def _labels(name: str, n: int) -> torch.Tensor:
    return torch.tensor(np.broadcast_to(camera_label(*CAMERAS[name]), (n, 25)).copy(), dtype=torch.float32)


def mean_w(G, samples: int = 256, seed: int = 0) -> torch.Tensor:
    """(1, num_ws, w_dim): the mean of ``samples`` mapped latents, conditioned on the front camera."""
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.mapping(z, _labels("front", samples)).mean(0, keepdim=True)


def render_masks(G, ws: torch.Tensor, name: str) -> np.ndarray:
    """(N, S, S) bool at the output size: the truth metrics' silhouette of ``ws`` seen from camera ``name``."""
    with torch.no_grad():
        return synthesis_with_masks(G, ws, _labels(name, len(ws)))[1]


def fit_latents(G, targets: dict[str, np.ndarray], fit: list[str], steps: int, space: str = "w",
                lr: float = 0.02, log=print) -> tuple[torch.Tensor, list[float]]:
    """One latent per target row, fitted to ``targets[name]`` (N, S, S) bool at the ``fit`` cameras.

    Returns (ws (N, num_ws, w_dim), the loss at every step). ``space="w"``: one w broadcast to every layer;
    ``"wplus"``: one per layer."""
    if space not in ("w", "wplus"):
        raise ValueError(f"space must be 'w' or 'wplus', got {space!r}")
    nr = int(G.neural_rendering_resolution)
    n = len(next(iter(targets.values())))
    goal = {k: F.interpolate(torch.from_numpy(targets[k].astype(np.float32))[:, None], size=(nr, nr), mode="area")
            for k in fit}
    w0 = mean_w(G)
    num_ws = w0.shape[1]
    w = (w0[:, :1] if space == "w" else w0).repeat(n, 1, 1).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    losses, t0 = [], time.time()
    for step in range(steps):
        opt.zero_grad()
        ws = w.expand(-1, num_ws, -1)
        loss = sum(F.binary_cross_entropy(G.synthesis(ws, _labels(k, n), noise_mode="const").image_mask
                                          .clamp(1e-4, 1 - 1e-4), goal[k]) for k in fit)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step}  loss {losses[-1]:.4f}  {time.time() - t0:.0f} s")
    return w.detach().expand(-1, num_ws, -1), losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dataset of the procedural painter (its styles set the world)")
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--fit", default="front,left,right,back", help="cameras whose silhouettes the latents fit")
    ap.add_argument("--space", choices=("w", "wplus"), default="w")
    ap.add_argument("--identities", type=int, default=8, help="the first N held-out identities")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", required=True)
    add_heldout_attributes_argument(ap)
    args = ap.parse_args()
    fit = args.fit.split(",")
    unknown = [k for k in fit if k not in CAMERAS]
    if unknown:
        print(f"--fit: unknown camera(s) {', '.join(unknown)}; pass a comma list of {', '.join(CAMERAS)}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    G = load_snapshot(args.snapshot).generator.eval().requires_grad_(False)
    opts = TruthOptions(heldout_attributes=args.heldout_attributes)
    world = TruthWorld.from_options(args.data, int(G.cfg.output_resolution), opts, cache_dir())
    n = min(args.identities, len(world.identities))
    targets = {k: world.masks[k][:n] for k in CAMERAS}

    ws, losses = fit_latents(G, targets, fit, args.steps, args.space)
    fitted = {k: float(iou(render_masks(G, ws, k), targets[k]).mean()) for k in CAMERAS}
    start = {k: float(iou(render_masks(G, mean_w(G).expand(n, -1, -1), k), targets[k]).mean()) for k in CAMERAS}
    # the baseline on the same identities: the mean silhouette of all held-out identities, as the metric fits it
    baseline = {k: float(iou(mean_silhouette(world.masks[k])[None], targets[k]).mean()) for k in CAMERAS}
    result = {"snapshot": args.snapshot, "fit": fit, "space": args.space, "identities": n, "steps": args.steps,
              "truth_seed": opts.seed, "heldout_attributes": world.attributes, "loss_first_last": [losses[0], losses[-1]],
              "iou_fitted": fitted, "iou_mean_w": start, "iou_mean_silhouette": baseline,
              "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"| {n} identities, fit on {args.fit} ({args.space}, {args.steps} steps) | " + " | ".join(CAMERAS) + " |")
    print("|---" * (len(CAMERAS) + 1) + "|")
    for name, row in (("fitted latents", fitted), ("mean w (start)", start), ("mean silhouette", baseline)):
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in CAMERAS) + " |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
