"""Round 2's 16-kimg decision (RULE.md's rule, the runner's own ``decide``) over every seed.

Seeds 1 and 2 come from ``--out``'s results; seed 0 from ``seed0-16kimg-recorded.json`` beside this file
(its run's outputs were lost with the machine that made them; the file says which figures were kept and
how exact they are), unless ``--out`` holds a measured seed-0 result, which then replaces it. Writes ``decision_16kimg.json`` beside this file and prints it.

    .venv/bin/python evaluation/ablation/round2/decide_16kimg.py --out outputs/ablation
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from ablation_discriminator import decide, mean_sd  # noqa: E402

KEYS = ("truth_view_front", "truth_view_side", "truth_view_back", "truth_kid_inception_back",
        "truth_sil_agreement", "truth_sil_front_match")

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/ablation")
    args = p.parse_args()
    recorded = json.loads((HERE / "seed0-16kimg-recorded.json").read_text())["rows"]
    measured = [json.loads(f.read_text()) for f in sorted((Path(args.out) / "results").glob("ablation-default-*-16kimg.json"))]
    cell = lambda r: (r["d_mode"], r["seed"])  # noqa: E731
    done = {cell(r) for r in measured}
    rows = measured + [r for r in recorded if cell(r) not in done]  # a recorded row only where none was measured
    per_mode = {m: {"seeds": [r["seed"] for r in sorted(rs, key=lambda r: r["seed"])],
                    **{k: dict(zip(("mean", "sd"), mean_sd([r["metrics"][k] for r in rs]))) for k in KEYS},
                    "runs": {r["seed"]: {k: r["metrics"][k] for k in KEYS} for r in rs}}
                for m in ("coarse_to_fine", "fine") for rs in [[r for r in rows if r["d_mode"] == m]]}
    sources = {f"{m} seed {s}": f"measured ({args.out}/results)" if (m, s) in done
               else "recorded (seed0-16kimg-recorded.json)" for m, s in sorted(map(cell, rows))}
    result = {"decision": decide(rows, "default", 16.0), "per_mode": per_mode, "sources": sources}
    (HERE / "decision_16kimg.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
