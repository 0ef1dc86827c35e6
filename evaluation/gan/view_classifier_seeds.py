"""How much a snapshot's view consistency depends on the view classifier's seed.

Trains the truth metrics' view classifier (avatar3d.evaluation.truth.train_view_classifier, the stage's
defaults) with several seeds and scores the same generator renders with each: 48 per view group at the
GROUP_YAWS cameras, and 48 Janus heads at back cameras. Prints one JSON line per seed.

    .venv/bin/python evaluation/gan/view_classifier_seeds.py \
        --snapshot jobs/assets/gan_world/snapshot.safetensors --seeds 0,1,2

The "crisp renders" rows of evaluation/gan/README.md ("The view classifier") are the same script run at
commit d21a636, before the classifier trained on degraded renders.
"""
import argparse
import json
import time

import numpy as np
import torch

from avatar3d.evaluation.truth import (GROUP_YAWS, HELDOUT_SEED, generator_views, heldout_identities,
                                       train_view_classifier)
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.scene.avatar import render_avatar
from avatar3d.scene.cameras import camera_label

DEMO_STYLES = ["anime", "bronze_statue", "clay_figurine", "pixar"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--snapshot", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--per-group", type=int, default=48)
    args = p.parse_args()
    torch.set_num_threads(1)
    G = load_snapshot(args.snapshot).generator
    size = int(G.cfg.output_resolution)
    n = args.per_group
    rng = np.random.default_rng([0, 0x61D])
    renders, janus = {}, None
    for group, (lo, hi) in GROUP_YAWS.items():
        yaws = rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)
        renders[group], _ = generator_views(G, yaws, np.zeros(n), 1)
        if group == "back":
            idents = heldout_identities(DEMO_STYLES, n, seed=HELDOUT_SEED + 900)
            janus = np.stack([render_avatar(i, camera_label(float(y), 0.0), size, janus=True).image
                              for i, y in zip(idents, yaws)])
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.time()
        clf = train_view_classifier(DEMO_STYLES, seed=seed)
        row = {"seed": seed, "accuracy": round(clf.accuracy, 3),
               "accuracy_blurred": round(getattr(clf, "accuracy_blurred", float("nan")), 3),
               "seconds": round(time.time() - t0)}
        row.update({f"view_{g}": round(float(np.mean(clf.predict(im) == g)), 3) for g, im in renders.items()})
        row["janus_called_back"] = round(float(np.mean(clf.predict(janus) == "back")), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
