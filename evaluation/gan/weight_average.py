"""One generator whose weights average a run's checkpoint snapshots over a kimg window.

Each checkpoint snapshot of a training run is its EMA generator at that kimg. Averaging the snapshots
of a window [LO, HI] weight by weight (parameters averaged, buffers such as ``w_avg`` taken from the
newest, as the EMA copies them) gives a generator that averages far more of training than the run's
EMA did: a read-out with a longer horizon, made after the fact. It answers "would a longer EMA have
helped?" without training again; score the result as any snapshot, e.g. with ``silhouette_gap.py``.
A window whose snapshots sit in different basins averages to noise, which the scores show.

    .venv/bin/python evaluation/gan/weight_average.py \\
        --checkpoints outputs/world_s1_gan/mlartifacts/<run>/artifacts/checkpoints \\
        --window 17-40 --out outputs/ema/avg17-40.safetensors

Reads ``<checkpoints>/*/snapshot.safetensors`` (the training loop's checkpoint folders, ``kimg<K>``);
writes one snapshot, its ``info`` naming the kimg averaged. CPU, seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from avatar3d.gan.snapshot import load_snapshot, read_snapshot_metadata, save_snapshot
from avatar3d.training.loop import SNAPSHOT_FILE  # a checkpoint folder's inference snapshot


def checkpoints(folder: Path) -> list[tuple[float, Path]]:
    """(kimg, snapshot) of every checkpoint folder under ``folder``, oldest first."""
    found = []
    for path in folder.glob(f"*/{SNAPSHOT_FILE}"):
        found.append((float(read_snapshot_metadata(path)["info"]["kimg"]), path))
    return sorted(found)


@torch.no_grad()
def average(paths: list[Path]) -> torch.nn.Module:
    """The generator of the newest snapshot with every parameter replaced by its mean over ``paths``."""
    snaps = [load_snapshot(p).generator for p in paths]
    params = [dict(s.named_parameters()) for s in snaps]
    shapes = {n: p.shape for n, p in params[-1].items()}
    for path, other in zip(paths, params):
        if {n: p.shape for n, p in other.items()} != shapes:
            raise ValueError(f"{path} has another architecture than {paths[-1]}; average one run's checkpoints")
    for name, param in params[-1].items():
        param.copy_(torch.stack([p[name].double() for p in params]).mean(0).to(param.dtype))
    return snaps[-1]


def parse_window(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition("-")
    try:
        window = float(lo), float(hi)
    except ValueError:
        window = None
    if not sep or window is None or window[0] > window[1]:
        raise ValueError(f"--window={text!r}: pass LO-HI in kimg with LO <= HI, e.g. 17-40")
    return window


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", required=True, help="a run's checkpoint folders (kimg<K>/snapshot.safetensors)")
    ap.add_argument("--window", required=True, help="LO-HI: average the snapshots at LO <= kimg <= HI")
    ap.add_argument("--out", required=True, help="the averaged snapshot (.safetensors)")
    args = ap.parse_args(argv)
    try:
        lo, hi = parse_window(args.window)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists():  # nothing already written is replaced, a checkpoint least of all
        print(f"--out={out} exists; pass a new file", file=sys.stderr)
        return 2
    folder = Path(args.checkpoints)
    try:
        found = checkpoints(folder) if folder.is_dir() else []
        chosen = [(k, p) for k, p in found if lo - 1e-9 <= k <= hi + 1e-9]
        if chosen:
            meta = read_snapshot_metadata(chosen[-1][1])
            G = average([p for _, p in chosen])
    except ValueError as err:  # a damaged snapshot, or snapshots of different architectures
        print(f"--checkpoints={folder}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if not chosen:
        have = f"{found[0][0]:g}-{found[-1][0]:g} kimg" if found else "none"
        print(f"--window={args.window}: no checkpoint snapshot of {folder} falls in it (they span {have}); "
              "pass a window over the run's checkpoints", file=sys.stderr)
        return 2
    info = {**meta["info"], "averaged_kimg": [k for k, _ in chosen], "averaged_from": str(folder)}
    save_snapshot(out, G, meta["gan_config"], info)
    print(f"{out}: {len(chosen)} snapshots averaged, {chosen[0][0]:g}-{chosen[-1][0]:g} kimg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
