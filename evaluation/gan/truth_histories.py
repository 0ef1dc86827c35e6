"""Training-time truth metrics of several world runs side by side, kimg by kimg.

Each ``NAME=SOURCE`` is a run's MLflow store (``<output_dir>/mlflow.db``; its one training run, or the
one whose name is ``SOURCE#run_name``) or a shipped asset's card with a ``truth_history``
(``jobs/assets/gan_world.json``). The figures are the ones the training loop logged every
``truth_ticks`` (``truth_sil_agreement`` beside ``truth_sil_baseline``, the views), so arms compare at the
same kimg only when they ran with the same truth options (held-out identities, truth seed) and the same
version of the metrics. Rows are keyed by the exact kimg logged (images seen / 1000).

    .venv/bin/python evaluation/gan/truth_histories.py --out evaluation/gan/results/truth_histories_capacity.json \
        shipped=jobs/assets/gan_world.json box075=outputs/capacity/box075/mlflow.db ...

Writes the JSON (every figure per arm and kimg, the command) and prints a Markdown table of the
silhouette agreement per arm at each kimg any arm logged.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = ("sil_agreement", "sil_baseline", "sil_front_match", "view_front", "view_side", "view_back")
SQLITE_HEADER = b"SQLite format 3\x00"


class SourceError(ValueError):
    """A source this script cannot read; the message names it and what to pass instead."""


def from_card(path: Path) -> dict[float, dict[str, float]]:
    """kimg -> figures from an asset card's ``truth_history``."""
    try:
        history = json.loads(path.read_text())["truth_history"]
        return {round(float(h["kimg"]), 3): {k: h[k] for k in KEYS if k in h} for h in history}
    except (ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{path}: not an asset card with a truth_history of {{kimg, ...}} entries ({e!r}); "
                          "pass a card such as jobs/assets/gan_world.json") from None


def from_store(path: Path, run_name: str | None) -> dict[float, dict[str, float]]:
    """kimg -> figures from the run's ``truth_*`` metrics in an MLflow sqlite store (step = images seen)."""
    with path.open("rb") as f:  # MLflow would create its schema in any other file: read only real stores
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise SourceError(f"{path}: not an sqlite MLflow store; pass a run's <output_dir>/mlflow.db")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path.resolve()}")
    with_truth = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                  if f"truth_{KEYS[0]}" in r.data.metrics]
    runs = [r for r in with_truth if run_name in (None, r.info.run_name)]
    if len(runs) != 1:
        raise SourceError(f"{path}: {len(runs)} runs with truth metrics{f' named {run_name!r}' if run_name else ''} "
                          f"(runs with them: {sorted(r.info.run_name for r in with_truth)}); "
                          "pass SOURCE#run_name to pick one")
    out: dict[float, dict[str, float]] = {}
    for key in KEYS:
        for m in client.get_metric_history(runs[0].info.run_id, f"truth_{key}"):
            out.setdefault(round(m.step / 1000.0, 3), {})[key] = m.value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arms", nargs="+", help="NAME=SOURCE (an mlflow.db, optionally #run_name, or an asset card)")
    ap.add_argument("--out", required=True, help="the JSON to write")
    args = ap.parse_args()
    arms = {}
    for arm in args.arms:
        name, _, source = arm.partition("=")
        path, _, run_name = source.partition("#")
        if not name or name in arms or not Path(path).is_file():
            print(f"{arm!r}: pass NAME=SOURCE, each NAME once, with SOURCE an existing mlflow.db or asset card",
                  file=sys.stderr)
            return 2
        try:
            arms[name] = from_card(Path(path)) if path.endswith(".json") else from_store(Path(path), run_name or None)
        except SourceError as e:
            print(e, file=sys.stderr)
            return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                               "arms": {n: {str(k): v for k, v in sorted(h.items())} for n, h in arms.items()}},
                              indent=2))
    kimgs = sorted({k for h in arms.values() for k in h})
    print("| kimg | " + " | ".join(arms) + " | mean silhouette |")
    print("|---" * (len(arms) + 2) + "|")
    for k in kimgs:
        cells = [f"{arms[n][k]['sil_agreement']:.3f}" if "sil_agreement" in arms[n].get(k, {}) else "" for n in arms]
        base = next((h[k]["sil_baseline"] for h in arms.values() if "sil_baseline" in h.get(k, {})), None)
        tail = f"{base:.3f}" if base is not None else ""
        print(f"| {k:.3f} | " + " | ".join(cells) + f" | {tail} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
