"""Score finished generators of the procedural world side by side with the truth metrics.

Each ``NAME=SNAPSHOT`` is scored by the evaluation stage's truth metrics (``compute_truth``: silhouette
agreement beside its mean-silhouette baseline and ceiling, view consistency, KID and FID per view on
Inception features) under several truth seeds. A truth seed draws the latents, cameras, held-out
identities and the view classifier, and is shared by every arm, so arms are compared seed by seed.

    .venv/bin/python evaluation/gan/score_world_arms.py --data outputs/world_s1 --seeds 0,1,2 \
        --tag long labels=jobs/assets/gan_world/snapshot.safetensors \
        shuffled=outputs/world_s1_shuffled/world-s1-shuffled/network-snapshot-final.safetensors

Writes ``results/arms[-<tag>].json`` (every figure and count per arm and seed, the command) and prints a
Markdown table of mean and sample standard deviation over seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from avatar3d.evaluation.features import get_extractor
from avatar3d.evaluation.options import TruthOptions, add_heldout_attributes_argument
from avatar3d.evaluation.truth import TruthWorld
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.runtime import cache_dir

RESULTS = Path(__file__).parent / "results"
SHOWN = ("sil_agreement", "sil_varying", "sil_front_match", "view_front", "view_side", "view_back",
         "kid_inception_front", "kid_inception_side", "kid_inception_back", "fid_inception_all")
CONTROLS = ("sil_baseline", "sil_ceiling", "sil_varying_baseline", "sil_varying_ceiling", "sil_front_match_ceiling",
            "classifier_accuracy", "classifier_accuracy_blurred", "classifier_janus_as_back")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arms", nargs="+", help="NAME=SNAPSHOT")
    ap.add_argument("--data", required=True, help="a dataset of the procedural painter (its styles set the world)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-inception", action="store_true")
    add_heldout_attributes_argument(ap)
    args = ap.parse_args()
    arms = {name: (path, load_snapshot(path)) for name, path in (a.split("=", 1) for a in args.arms)}
    seeds = [int(s) for s in args.seeds.split(",")]
    size = int(next(iter(arms.values()))[1].generator.cfg.output_resolution)
    extractor = None if args.no_inception else get_extractor("inception")
    rows = []
    for seed in seeds:
        # What the stage's compute_truth does, with one world per seed shared by every arm (its renders,
        # classifier and truth features are the same for all of them).
        world = TruthWorld.from_options(args.data, size, TruthOptions(seed=seed, heldout_attributes=args.heldout_attributes), cache_dir())
        for name, (path, snap) in arms.items():
            t0 = time.time()
            result = world.evaluate(snap.generator, num_avatars=TruthOptions.num_avatars, seed=seed,
                                    extractor=extractor)
            rows.append({"arm": name, "snapshot": path, "kimg": snap.info.get("kimg"), "seed": seed,
                         "values": result.values, "counts": result.counts, "seconds": round(time.time() - t0)})
            print(f"{name} seed {seed}: {result.summary()}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"arms{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "painted_by": "avatar3d procedural painter",
                               "heldout_attributes": args.heldout_attributes,
                               "rows": rows}, indent=2))
    print(table(rows))
    print(f"wrote {out}")
    return 0


def table(rows: list[dict]) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fmt = lambda xs: f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"  # noqa: E731
    lines = ["| arm | " + " | ".join(SHOWN) + " |", "|" + " --- |" * (len(SHOWN) + 1)]
    for arm in arms:
        vals = [r["values"] for r in rows if r["arm"] == arm]
        lines.append(f"| {arm} | " + " | ".join(fmt([v[k] for v in vals]) if k in vals[0] else "-" for k in SHOWN)
                     + " |")
    controls = rows[0]["values"]
    lines.append("")
    lines.append("Controls (seed %d): " % rows[0]["seed"]
                 + ", ".join(f"{k} {controls[k]:.3f}" for k in CONTROLS if k in controls))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
