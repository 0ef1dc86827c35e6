"""Learning in the procedural world through the real training job, with its controls.

Trains the tiny GAN with ``avatar3d train-gan``'s library call (Ray Train, the demo's model
options) on a dataset of the procedural painter, three times at the same budget:

* ``labels``:   as the demo trains,
* ``shuffled``: camera labels permuted among each batch's images (``data.shuffle_labels``),
* ``frozen``:   ``lr_g = 0`` (the generator never moves),

optionally each starting from a snapshot (``--transfer``), and measures the truth metrics
(``avatar3d.evaluation.truth``) of each final generator beside the mean-silhouette baseline.

    OMP_NUM_THREADS=1 python evaluation/gan/bench_world.py --data outputs/demo/dataset --kimg 2.4

Writes ``results/world[-<tag>].json`` (figures, counts, the command).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from avatar3d.config import load_config
from avatar3d.evaluation.options import TruthOptions, add_heldout_attributes_argument
from avatar3d.evaluation.stage import compute_truth
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.job import run_train_gan

RESULTS = Path(__file__).parent / "results"
DEMO_MODEL = "model.overrides={white_back: true, blur_fade_kimg: 1.0}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dataset of the procedural painter")
    ap.add_argument("--kimg", type=float, default=2.4, help="training budget per arm (thousands of images)")
    ap.add_argument("--arms", default="labels,shuffled,frozen")
    ap.add_argument("--transfer", default="", help="snapshot every arm starts from (default: from scratch)")
    ap.add_argument("--out", default="outputs/bench_world", help="training runs go here")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--seed", type=int, default=0)
    add_heldout_attributes_argument(ap)
    args = ap.parse_args()

    results = {"command": "python " + " ".join(sys.argv), "data": args.data, "kimg": args.kimg,
               "transfer": args.transfer or None, "heldout_attributes": args.heldout_attributes, "arms": {}}
    truth_opts = TruthOptions(heldout_attributes=args.heldout_attributes)
    for arm in args.arms.split(","):
        overrides = [f"data.path={args.data}", f"output_dir={args.out}", f"run_name={arm}-{args.tag or 'run'}",
                     f"total_kimg={args.kimg}", "kimg_per_tick=0.2", "batch_size=8", "scaling.strategy=plain",
                     "snapshot_ticks=1000", "image_ticks=1000", "tracking.register_name=", f"seed={args.seed}"]
        model = DEMO_MODEL if arm != "frozen" else DEMO_MODEL.replace("}", ", lr_g: 0.0}")
        overrides.append(model)
        if arm == "shuffled":
            overrides.append("data.shuffle_labels=true")
        if args.transfer:
            overrides.append(f"transfer={args.transfer}")
        cfg = load_config(TrainGANConfig, "jobs/configs/train_gan_tiny.yaml", overrides)
        cfg.validate()
        t0 = time.time()
        trained = run_train_gan(cfg)
        seconds = time.time() - t0
        metrics = compute_truth(load_snapshot(trained.snapshot).generator, args.data, truth_opts)
        results["arms"][arm] = {"values": metrics.values, "counts": metrics.counts, "train_wall_s": round(seconds, 1)}
        print(arm, metrics.summary(), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"world{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
