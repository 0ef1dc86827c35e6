"""Discriminator ablation in the procedural world: fine vs coarse vs coarse-to-fine pose labels (issue #18).

The decision rule, the misalignment levels and the budget were fixed before
any run in ``RULE.md`` beside this file. Every image is painted by the
procedural painter (docs/method.md section 9), not by Stable Diffusion.

1. the level's dataset: ``avatar3d generate`` with the procedural painter and
   the level's ``procedural.*`` failure rates (resumes; a finished one is reused);
2. per (mode, seed): ``run_train_gan`` (Ray Train, the CLI's code path) with
   ``model.overrides.d_mode=<mode>`` and nothing else changed; truth metrics
   every ``truth_ticks`` give the curves;
3. each final EMA generator is scored by the same :class:`TruthWorld`
   (evaluation seed 0): view consistency, KID per view group on Inception and
   view-classifier features, silhouette agreement; a front/back grid of 8
   avatars is saved;
4. ``--aggregate``: every run's JSON -> mean and spread per mode, the rule's
   decision, curves, ``ablation.md`` / ``ablation.json`` / ``curves.png`` /
   ``front_back.png`` (every run's grid, labelled), and
   one MLflow run per training run and budget in ``<out>/mlflow.db`` (experiment
   ``avatar3d-ablation-discriminator``, tags ``ablation``, ``level``,
   ``d_mode``, ``seed``, ``kimg``: filter and Compare in ``mlflow ui``).

A longer ``--kimg`` resumes each training run (same run name) and scores it
beside the shorter budget; budgets are decided apart (RULE_ROUND2.md).

Runs of one process are sequential; several processes (e.g. one per mode)
can share ``--out``: each run writes its own folder and JSON.

    OMP_NUM_THREADS=1 python evaluation/ablation/ablation_discriminator.py --out outputs/ablation \\
        --level default --modes fine --seeds 0,1,2
    OMP_NUM_THREADS=1 python evaluation/ablation/ablation_discriminator.py --out outputs/ablation --aggregate
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODES = ("fine", "coarse", "coarse_to_fine")
EXPERIMENT = "avatar3d-ablation-discriminator"
# RULE.md: the frozen misalignment levels (procedural.* of the painter)
LEVELS = {
    "none": dict(side_error_rate=0.0, side_yaw_error_deg=0.0, side_pitch_error_deg=0.0, back_janus_rate=0.0,
                 back_flip_rate=0.0),
    "default": dict(side_error_rate=0.5, side_yaw_error_deg=20.0, side_pitch_error_deg=8.0, back_janus_rate=0.2,
                    back_flip_rate=0.1),
    "strong": dict(side_error_rate=0.8, side_yaw_error_deg=35.0, side_pitch_error_deg=12.0, back_janus_rate=0.4,
                   back_flip_rate=0.2),
}
DATA_SEED = 2  # RULE.md: used by no shipped asset
SEEDS = (0, 1, 2)  # RULE.md: the training seeds of every cell; a decision waits for all of them
# The held-out identities of RULE.md's protocol: no attributes named (the painter's own draws), as when the rule
# was frozen; the truth metrics' default later became the dataset's mix of named attributes.
HELDOUT_ATTRIBUTES = "none"
PRIMARY = (("truth_view_back", +1), ("truth_kid_inception_back", -1))  # RULE.md: B (higher better), K (lower)
SECONDARY = ("truth_view_front", "truth_view_side", "truth_kid_inception_front", "truth_kid_inception_side",
             "truth_kid_back", "truth_sil_agreement", "truth_sil_varying")


def world_dataset(out: Path, level: str, images: int, size: int) -> Path:
    """The level's dataset (procedural painter), generated once and reused."""
    from avatar3d.config import load_config
    from avatar3d.datagen.config import GenerateConfig
    from avatar3d.datagen.job import run_generation

    data = out / f"data-{level}"
    cfg = load_config(GenerateConfig, str(ROOT / "jobs" / "configs" / "generate_procedural.yaml"), [
        f"output_dir={data}", f"num_samples={images}", f"seed={DATA_SEED}", f"resolution={size}",
        "tracking.enabled=false", "progress_interval_s=30", *[f"procedural.{k}={v}" for k, v in LEVELS[level].items()]])
    run_generation(cfg)
    return data


def run_name(level: str, mode: str, seed: int) -> str:
    """The training run's name: the same at every budget, so a longer budget resumes the shorter run."""
    return f"ablation-{level}-{mode}-s{seed}"


def result_name(level: str, mode: str, seed: int, kimg: float) -> str:
    """One scored result per run and budget (a run extended from 8 to 16 kimg is scored at both)."""
    return f"{run_name(level, mode, seed)}-{kimg:g}kimg"


def train_config(args, mode: str, seed: int, data: Path):
    from avatar3d.config import load_config
    from avatar3d.training.config import TrainGANConfig

    cfg = load_config(TrainGANConfig, str(ROOT / "jobs" / "configs" / "train_gan_tiny.yaml"), [
        f"run_name={run_name(args.level, mode, seed)}", f"output_dir={Path(args.out) / 'runs' / mode}",
        f"data.path={data}", f"batch_size={args.batch}", f"total_kimg={args.kimg}",
        f"kimg_per_tick={args.kimg_per_tick}", f"seed={seed}", "scaling.strategy=plain",
        f"truth_ticks={args.truth_ticks}", f"truth.per_group={args.curve_per_group}", "fid_ticks=0",
        f"truth.classifier_train={args.classifier_train}", f"truth.classifier_steps={args.classifier_steps}",
        f"truth.heldout_attributes={HELDOUT_ATTRIBUTES}", f"snapshot_ticks={args.snapshot_ticks}", "image_ticks=100000",
        f"tracking.experiment={EXPERIMENT}", "tracking.register=false",
    ])
    overrides = {"white_back": True, "blur_fade_kimg": 1.0, "d_mode": mode}  # RULE.md; only d_mode varies
    if args.preset == "micro":  # the test suite's CPU-sized GAN (32 px), for checking the runner
        from tests.training.fixtures import MICRO_GAN

        overrides = {**MICRO_GAN, **overrides, "blur_fade_kimg": MICRO_GAN["blur_fade_kimg"]}
    cfg.model.overrides = overrides
    cfg.validate()
    return cfg


def curves(tracking_uri: str, run_id: str) -> dict[str, list[list[float]]]:
    """Truth-metric history of a training run: name -> [[kimg, value], ...]."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    out = {}
    for key in ("truth_view_front", "truth_view_side", "truth_view_back", "truth_kid_back", "truth_sil_varying"):
        out[key] = [[m.step / 1000.0, m.value] for m in sorted(client.get_metric_history(run_id, key),
                                                               key=lambda m: m.step)]
    return out


def front_back_grid(G, n: int = 8) -> "object":
    """A 2 x n grid: the same n avatars from the front (yaw 0) and from the back (yaw 180)."""
    import numpy as np

    from avatar3d.evaluation.truth import MATCH_CAMERA, generator_views

    # One w per avatar (mapped with the front camera); pictures made before this change mapped each
    # camera's latent with that camera (evaluation/ablation/README.md, level none).
    rows = [generator_views(G, [yaw] * n, [0.0] * n, seed=0, condition=MATCH_CAMERA)[0] for yaw in (0.0, 180.0)]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


class BudgetError(ValueError):
    """A run cannot be scored at the budget asked for (or its final snapshot cannot be read)."""


def check_budget(args, run: str, kimg: float, at_least: bool = True) -> None:
    """Training stops within one batch past the budget; more is a run that had gone further (--kimg 8 after
    16). ``at_least=False``: the run may still be short of the budget (it will be trained on to it)."""
    if kimg >= args.kimg + args.batch / 1000 - 1e-9:
        raise BudgetError(f"--kimg {args.kimg:g}: run {run} is already at {kimg:g} kimg and cannot be "
                          "scored at a shorter budget; pass --kimg of at least that")
    if at_least and kimg < args.kimg - 1e-9:
        raise BudgetError(f"--kimg {args.kimg:g}: run {run} ended at {kimg:g} kimg, short of the budget; "
                          "run the same command again to train it on")


def snapshot_kimg(path: Path) -> float:
    """The kimg a run's snapshot was written at; a damaged one is a BudgetError naming it."""
    from avatar3d.gan.snapshot import read_snapshot_metadata

    try:
        return float(read_snapshot_metadata(path)["info"]["kimg"])
    except (ValueError, KeyError, TypeError) as exc:
        why = "no kimg recorded" if isinstance(exc, (KeyError, TypeError)) else "not a readable generator snapshot"
        raise BudgetError(f"{path}: cannot read the run's kimg ({why}); move its run folder aside to train "
                          "the run anew") from None


def train_and_score(args, mode: str, seed: int, data: Path, world, extractor) -> dict:
    from PIL import Image

    from avatar3d.gan.snapshot import load_snapshot
    from avatar3d.tracking.tracker import default_tracking_uri
    from avatar3d.training.job import FINAL_SNAPSHOT, run_train_gan

    cfg = train_config(args, mode, seed, data)
    final = Path(cfg.output_dir) / cfg.run_name / FINAL_SNAPSHOT
    if final.exists():  # a run known to be past the budget is refused before Ray starts
        check_budget(args, cfg.run_name, snapshot_kimg(final), at_least=False)
    t0 = time.time()
    trained = run_train_gan(cfg)
    train_s = time.time() - t0  # a run resumed to a longer budget: the extension only
    kimg = snapshot_kimg(trained.snapshot)
    check_budget(args, cfg.run_name, kimg)
    G = load_snapshot(trained.snapshot).generator
    t1 = time.time()
    truth = world.evaluate(G, num_avatars=args.num_avatars, seed=0, extractor=extractor)
    name = result_name(args.level, mode, seed, args.kimg)
    Image.fromarray(front_back_grid(G)).save(Path(args.out) / "results" / f"{name}-front-back.png")
    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri(cfg.output_dir)
    return {"level": args.level, "d_mode": mode, "seed": seed, "kimg": kimg, "train_s": round(train_s, 1),
            "eval_s": round(time.time() - t1, 1), "metrics": truth.metrics(), "counts": truth.counts,
            "protocol": truth.protocol, "curves": curves(tracking_uri, trained.mlflow_run_id),
            "training_run": {"tracking_uri": tracking_uri, "run_id": trained.mlflow_run_id},
            "snapshot": str(trained.snapshot), "data": str(data), "painted_by": "avatar3d/procedural-painter-v1",
            "procedural": LEVELS[args.level], "budget": {"kimg": args.kimg, "batch": args.batch, "preset": args.preset}}


# --------------------------------------------------------------------------- aggregate


def mean_sd(values: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def gap(rows_a: list[dict], rows_b: list[dict], key: str, sign: int) -> dict:
    """RULE.md's gap of ``a`` over ``b`` on one measure, in units of the larger of the two seed spreads
    (``sign`` +1: higher is better; -1: lower is better)."""
    (ma, sa), (mb, sb) = (mean_sd([r["metrics"][key] for r in rows]) for rows in (rows_a, rows_b))
    spread = max(sa, sb)
    return {"mean_a": ma, "mean_b": mb, "spread": spread,
            "gap_in_spreads": sign * (ma - mb) / spread if spread > 0 else float("inf")}


def budget(row: dict) -> float:
    return float(row["budget"]["kimg"])


def every_seed(by_mode: dict[str, list[dict]]) -> bool:
    """Whether each mode's runs are exactly RULE.md's seeds (a decision waits for all of them)."""
    return all(sorted(r["seed"] for r in runs) == list(SEEDS) for runs in by_mode.values())


def decide(rows: list[dict], level: str, kimg: float, a: str = "coarse_to_fine", b: str = "fine") -> dict:
    """RULE.md's decision for ``a`` vs ``b`` at ``level`` and budget ``kimg`` -> verdict and both gaps in units
    of the spread."""
    by = {m: [r for r in rows if r["level"] == level and budget(r) == kimg and r["d_mode"] == m] for m in (a, b)}
    if not every_seed(by):  # no verdict from a partial set
        return {"level": level, "kimg": kimg, "verdict": f"waits for every mode's seeds {', '.join(map(str, SEEDS))}",
                "seeds": {m: len(v) for m, v in by.items()}}
    gaps = {}
    for key, sign in PRIMARY:
        g = gap(by[a], by[b], key, sign)
        gaps[key] = {"mean_" + a: g["mean_a"], "mean_" + b: g["mean_b"], "spread": g["spread"],
                     "gap_in_spreads": g["gap_in_spreads"]}
    if all(g["gap_in_spreads"] > 2 for g in gaps.values()):
        verdict = f"{a} wins"
    elif all(g["gap_in_spreads"] < -2 for g in gaps.values()):
        verdict = f"{b} wins"
    else:
        verdict = "not separated at this budget"
    return {"level": level, "kimg": kimg, "verdict": verdict, "gaps": gaps,
            "seeds": {m: len(v) for m, v in by.items()}}


def cost_when_right(rows: list[dict], kimg: float, a: str = "coarse_to_fine", b: str = "fine") -> dict | None:
    """RULE.md's cost check at level ``none`` and budget ``kimg``: any group where ``a`` is worse than ``b`` by
    more than 2 spreads."""
    by = {m: [r for r in rows if r["level"] == "none" and budget(r) == kimg and r["d_mode"] == m] for m in (a, b)}
    if not every_seed(by):
        return None
    worse = []
    for group in ("front", "side", "back"):
        for key, sign in ((f"truth_view_{group}", +1), (f"truth_kid_inception_{group}", -1)):
            g = gap(by[a], by[b], key, sign)
            if g["spread"] > 0 and g["gap_in_spreads"] < -2:  # a worse than b by more than 2 spreads
                worse.append(key)
    return {"kimg": kimg, "costs_something": bool(worse), "worse_on": worse}


def markdown(rows: list[dict], decisions: list[dict], costs: list[dict]) -> str:
    keys = [k for k, _ in PRIMARY] + list(SECONDARY)
    short = {k: k.removeprefix("truth_").replace("kid_inception", "KID-Inc").replace("view_", "view ")
             for k in keys}
    lines = ["| level | kimg | D pose label | seeds | " + " | ".join(short[k] for k in keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    cells = sorted({(r["level"], budget(r), r["d_mode"]) for r in rows})
    for level, kimg, mode in cells:
        group = [r for r in rows if r["level"] == level and budget(r) == kimg and r["d_mode"] == mode]
        stats = [mean_sd([r["metrics"][k] for r in group]) for k in keys]
        lines.append(f"| {level} | {kimg:g} | {mode} | {','.join(str(r['seed']) for r in group)} | "
                     + " | ".join(f"{m:.3g} ± {s:.2g}" if s == s else f"{m:.3g}" for m, s in stats) + " |")
    r0 = rows[0]
    lines += ["", f"Mean ± sample standard deviation over seeds. Per run: {r0['counts']['view_per_group']} renders "
              f"per view group (view consistency, KID vs as many truth renders), {r0['counts']['sil_avatars']} "
              f"avatars x 3 held-out views for silhouettes, at batch {r0['budget']['batch']} "
              f"({r0['budget']['preset']} preset); a longer budget resumes the same training run. "
              "Images painted by the procedural painter.", ""]
    for d in decisions:
        if "gaps" in d:
            gaps = "; ".join(f"{k.removeprefix('truth_')}: gap {g['gap_in_spreads']:+.2f} spreads "
                             f"(spread {g['spread']:.3g})" for k, g in d["gaps"].items())
            lines.append(f"**Decision at level `{d['level']}`, {d['kimg']:g} kimg: {d['verdict']}** ({gaps}; "
                         f"seeds {d['seeds']}).")
        else:
            lines.append(f"**Decision at level `{d['level']}`, {d['kimg']:g} kimg: {d['verdict']}** "
                         f"(seeds {d['seeds']}).")
    for cost in costs:
        lines.append(f"**Cost when labels are right (level `none`, {cost['kimg']:g} kimg)**: "
                     + (f"coarse-to-fine is worse on {', '.join(cost['worse_on'])}" if cost["costs_something"]
                        else "none beyond 2 spreads"))
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("truth_view_back", "truth_view_front", "truth_kid_back", "truth_sil_varying")
    colours = {"fine": "tab:blue", "coarse": "tab:green", "coarse_to_fine": "tab:red"}
    styles = dict(zip(LEVELS, ("-", "--", ":")))  # the misalignment level by line, the mode by colour
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    longest = {}  # a run scored at 8 and 16 kimg: its 16-kimg row carries the whole curve
    for r in rows:
        key = (r["level"], r["d_mode"], r["seed"])
        if key not in longest or budget(r) > budget(longest[key]):
            longest[key] = r
    for ax, key in zip(axes, keys):
        for r in longest.values():
            pts = r["curves"].get(key, [])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours.get(r["d_mode"], "k"), alpha=0.8,
                        linestyle=styles.get(r["level"], "-"), marker=".", label=f"{r['d_mode']} s{r['seed']} ({r['level']})")
        ax.set_title(key.removeprefix("truth_"), fontsize=9)
        ax.set_xlabel("kimg")
    axes[0].legend(fontsize=6)
    fig.suptitle("training curves (truth metrics every truth_ticks; procedural painter)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def montage(rows: list[dict], out: Path, scale: int = 2) -> Path | None:
    """Every run's front/back grid in one picture, labelled (level, mode, seed), upscaled for reading."""
    from PIL import Image, ImageDraw

    tiles = []
    for r in sorted(rows, key=lambda r: (r["level"], budget(r), r["d_mode"], r["seed"])):
        path = out / "results" / f"{result_name(r['level'], r['d_mode'], r['seed'], budget(r))}-front-back.png"
        if path.is_file():
            with Image.open(path) as im:
                tiles.append((f"{r['level']} / {budget(r):g} kimg / {r['d_mode']} / seed {r['seed']}: "
                              "front row yaw 0, back row yaw 180",
                              im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST)))
    if not tiles:
        return None
    width, label_h = max(t.width for _, t in tiles), 18
    sheet = Image.new("RGB", (width, sum(t.height + label_h for _, t in tiles)), "white")
    y = 0
    draw = ImageDraw.Draw(sheet)
    for text, tile in tiles:
        draw.text((4, y + 3), text, fill="black")
        sheet.paste(tile, (0, y + label_h))
        y += tile.height + label_h
    sheet.save(out / "front_back.png")
    return out / "front_back.png"


def log_comparison_runs(rows: list[dict], out: Path) -> None:
    """One MLflow run per training run in ``<out>/mlflow.db``: final truth metrics and tags, to Compare."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT) or client.get_experiment(client.create_experiment(EXPERIMENT))
    done = {(r.data.tags.get("level"), r.data.tags.get("d_mode"), r.data.tags.get("seed"), r.data.tags.get("kimg"))
            for r in client.search_runs([exp.experiment_id], max_results=1000)}
    for r in rows:
        key = (r["level"], r["d_mode"], str(r["seed"]), f"{budget(r):g}")
        if key in done:
            continue
        run = client.create_run(exp.experiment_id, run_name=result_name(*key[:2], r["seed"], budget(r)),
                                tags={"ablation": "discriminator", "level": key[0], "d_mode": key[1], "seed": key[2],
                                      "kimg": key[3],
                                      "painted_by": r["painted_by"],
                                      "training_run": f"{r['training_run']['tracking_uri']}#{r['training_run']['run_id']}"})
        for k, v in r["metrics"].items():
            if v == v:
                client.log_metric(run.info.run_id, k, v)
        client.log_metric(run.info.run_id, "kimg", r["kimg"])
        client.set_terminated(run.info.run_id)


def aggregate(out: Path) -> int:
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("ablation-*.json"))]
    if not rows:
        print(f"--aggregate: no run results in {out / 'results'}: run the ablation first", file=sys.stderr)
        return 2
    cells = sorted({(r["level"], budget(r)) for r in rows}, key=lambda c: (list(LEVELS).index(c[0]), c[1]))
    decisions = [decide(rows, level, kimg) for level, kimg in cells]
    costs = [c for c in (cost_when_right(rows, kimg) for level, kimg in cells if level == "none") if c is not None]
    table = markdown(rows, decisions, costs)
    print(table)
    (out / "ablation.md").write_text(table + "\n")
    summary = {"decisions": decisions, "cost_when_right": costs,
               "runs": [{k: v for k, v in r.items() if k != "curves"} for r in rows]}
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    plot_curves(rows, out / "curves.png")
    montage(rows, out)
    log_comparison_runs(rows, out)
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    from avatar3d.evaluation.options import TruthOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--level", choices=list(LEVELS), default="default", help="misalignment level (RULE.md)")
    p.add_argument("--modes", default="fine,coarse_to_fine", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--images", type=int, default=2048, help="dataset size per level")
    p.add_argument("--size", type=int, default=64, help="image size of the dataset")
    p.add_argument("--preset", choices=["tiny", "micro"], default="tiny")
    p.add_argument("--kimg", type=float, default=8.0, help="training budget per run (RULE.md: 8)")
    p.add_argument("--kimg-per-tick", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--truth-ticks", type=int, default=8, help="curve points every N ticks")
    p.add_argument("--snapshot-ticks", type=int, default=8)
    p.add_argument("--curve-per-group", type=int, default=48, help="renders per view group for the curves")
    p.add_argument("--per-group", type=int, default=96, help="renders per view group for the final scores")
    p.add_argument("--num-identities", type=int, default=64)
    p.add_argument("--num-avatars", type=int, default=32)
    p.add_argument("--classifier-train", type=int, default=TruthOptions.classifier_train,
                   help="truth renders the view classifier trains on")
    p.add_argument("--classifier-steps", type=int, default=TruthOptions.classifier_steps,
                   help="view classifier training steps")
    p.add_argument("--extractor", default="inception", help="KID features beside the view classifier's")
    p.add_argument("--aggregate", action="store_true", help="only combine the runs already in --out")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    args.out = str(out)
    if args.aggregate:
        return aggregate(out)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"--modes: {unknown[0]!r} is not a discriminator mode; pass some of {', '.join(MODES)}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"--seeds={args.seeds!r}: pass comma-separated integers, e.g. 0,1,2", file=sys.stderr)
        return 2
    if not args.kimg > 0 or float(f"{args.kimg:g}") != args.kimg:  # the budget names the result files
        print(f"--kimg={args.kimg!r}: pass a positive budget of at most 6 significant digits, e.g. 8 or 16",
              file=sys.stderr)
        return 2
    (out / "results").mkdir(parents=True, exist_ok=True)

    from avatar3d.evaluation.features import get_extractor
    from avatar3d.evaluation.truth import TruthWorld
    from avatar3d.logs import setup_logging
    from avatar3d.runtime import set_torch_threads

    setup_logging()  # an entry point: the stages' progress lines (generation, training) reach stderr
    set_torch_threads()
    data = world_dataset(out, args.level, args.images, args.size)
    resolution = train_config(args, modes[0], seeds[0], data).model.build().output_resolution
    world = TruthWorld.build(str(data), int(resolution), num_identities=args.num_identities,
                             kid_per_group=args.per_group, cache_dir=out / "cache", seed=0,
                             classifier_train=args.classifier_train, classifier_steps=args.classifier_steps,
                             attributes=HELDOUT_ATTRIBUTES)
    extractor = get_extractor(args.extractor) if args.extractor else None
    for seed in seeds:
        for mode in modes:
            target = out / "results" / f"{result_name(args.level, mode, seed, args.kimg)}.json"
            if target.exists():
                print(f"{target.name}: done before, kept")
                continue
            try:
                row = train_and_score(args, mode, seed, data, world, extractor)
            except BudgetError as err:
                print(err, file=sys.stderr)
                return 2
            target.write_text(json.dumps(row, indent=2))
            m = row["metrics"]
            print(f"{args.level} {mode} seed {seed}: view back {m['truth_view_back']:.2f}, KID-Inception back "
                  f"{m['truth_kid_inception_back']:.4f} ({row['train_s']:.0f} s training, {row['eval_s']:.0f} s "
                  "scoring)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
