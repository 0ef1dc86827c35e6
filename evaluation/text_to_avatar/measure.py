"""Does text-to-avatar's *avatar* show the hair colour the prompt asked for, more often than random avatars do?

With the procedural painter the painted front view is right by construction (the prompt's
"red hair" sets the painter's hair colour), whatever the prior and the GAN do. So this scores
the avatar's renders at the side and back views, where only the 3D GAN (through the prior's w)
can put the hair colour, and compares them with a control: as many random-w avatars (z ~ N(0, I)
through the generator's mapping with the front camera, truncation 1: the distribution the
prior's pairs were drawn from), scored against the same prompts the same way.

The hair-colour reading (the painter's known truth, nothing learned):

* **where the hair is**: the painted identity (the painter's truth) is rendered at the scored
  camera once per hair colour of the painter's palette (8 colours, everything else equal); the
  pixels whose colour changes with the hair colour are the hair (the hair mask at that camera);
* **what colour**: the mean colour of the avatar's render inside that mask, classified as the
  palette colour whose truth render (same identity, camera and shading) has the nearest mean
  colour in that mask (Euclidean RGB). Chance is 1/8 for a reader that knows nothing;
* a (prompt, view) whose mask has fewer than ``MIN_HAIR_PX`` pixels (bald, or hair under a hat
  at that view) is left out, the same for the prior and the control, and counted.

Prompts: 8 hair colours x ``--per-colour`` phrasings (24 by default), styles pixar / anime /
clay_figurine in turn (the demo world's non-statue styles; statues are one colour), seed = prompt
index. Each prompt runs through :func:`avatar3d.prior.text.run_text_to_avatar` (the command's own
code, procedural painter, 64 px like the demo's dataset), writing its folder under ``--out``.

    .venv/bin/python evaluation/text_to_avatar/measure.py --demo /tmp/w/demo3 --out outputs/t2a_measure
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avatar3d.config import ConfigError
from avatar3d.datagen.config import PipelineConfig
from avatar3d.datagen.procedural import _HAIR_COLOURS as HAIR_PALETTE  # the painter's hair palette (its truth)
from avatar3d.prior.avatar import load_pipeline
from avatar3d.prior.pairs import row_seed
from avatar3d.prior.pipeline import PRIOR_JSON
from avatar3d.prior.text import match_attributes, run_text_to_avatar
from avatar3d.prior.text_config import TextToAvatarConfig
from avatar3d.prior.views import map_front, render_w, seeded_z
from avatar3d.scene.avatar import render_avatar
from avatar3d.scene.cameras import camera_label

COLOURS = {"black": "black", "brown": "brown", "blonde": "blonde", "red": "red", "grey": "grey", "white": "white",
           "pink": "pink", "blue": "blue"}  # prompt word -> palette key
TEMPLATES = ("a person with {c} hair",
             "a cheerful {c}-haired character wearing a scarf",
             "portrait of a young adult with {c} hair and green eyes")
STYLES = ("pixar", "anime", "clay_figurine")
VIEWS = {"left side": 90.0, "back": 180.0, "right side": -90.0}  # scored; the front is reported apart
YAWS = (0.0, 90.0, 180.0, -90.0)  # = view_yaws(4): what text-to-avatar renders with views=4
MIN_HAIR_PX = 20
CONTROL_SEED = 0xC0DE  # random-w control: z from row_seed(CONTROL_SEED, i), never the prior pairs' seed 0


def prompts(per_colour: int) -> list[dict]:
    out = []
    for t in range(per_colour):
        for colour in COLOURS:
            i = len(out)
            out.append({"index": i, "prompt": TEMPLATES[t % len(TEMPLATES)].format(c=colour), "colour": colour,
                        "style": STYLES[i % len(STYLES)], "seed": i})
    return out


def hair_truth(identity, yaw: float, size: int):
    """-> (hair mask at ``yaw``, {palette colour: mean truth colour in the mask}) for ``identity``."""
    label = camera_label(yaw, 0.0)
    renders = {k: render_avatar(dataclasses.replace(identity, hair_colour=rgb), label, size).image.astype(np.float64)
               for k, rgb in HAIR_PALETTE.items()}
    stack = np.stack(list(renders.values()))
    mask = (stack.max(axis=0) - stack.min(axis=0)).max(axis=-1) > 8.0
    refs = {k: im[mask].mean(axis=0) if mask.any() else np.full(3, np.nan) for k, im in renders.items()}
    return mask, refs


def read_colour(image: np.ndarray, mask: np.ndarray, refs: dict) -> tuple[str, np.ndarray]:
    mean = image.astype(np.float64)[mask].mean(axis=0)
    names = list(refs)
    dist = [float(np.linalg.norm(mean - refs[k])) for k in names]
    return names[int(np.argmin(dist))], mean


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided sign test of k successes in n discordant pairs (p = 1/2)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="/tmp/w/demo3", help="a finished demo folder (its prior/<run>/prior is used)")
    ap.add_argument("--prior", default=None, help="prior folder (default: the one under --demo)")
    ap.add_argument("--out", default="outputs/text_to_avatar_measure", help="one folder per prompt + results.json")
    ap.add_argument("--per-colour", type=int, default=3, help="phrasings per hair colour (8 colours)")
    ap.add_argument("--resolution", type=int, default=64, help="painted front view size (the demo dataset's 64)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    # The demo's own prior folder (<demo>/prior/<run>/prior), not the registry's copy under mlartifacts/.
    found = sorted(Path(args.demo).glob(f"prior/*/prior/{PRIOR_JSON}")) or sorted(Path(args.demo).rglob(PRIOR_JSON))
    prior = args.prior or (str(found[0].parent) if found else "")
    if not Path(prior, PRIOR_JSON).is_file():
        raise SystemExit(f"--demo/--prior: no prior folder ({PRIOR_JSON}) under {args.prior or args.demo}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"--out: {out} already holds results; pass --overwrite or another --out")
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.time()
    pipe = load_pipeline(prior)
    G = pipe.generator
    plist = prompts(args.per_colour)
    # The control: one random w per prompt, rendered at the same yaws with the same ray-jitter seed.
    control_w = map_front(G, seeded_z(G, [row_seed(CONTROL_SEED, p["index"]) for p in plist]), 1.0).w

    rows = []
    for p in plist:
        read = match_attributes(p["prompt"])
        assert read.attributes.get("hair_color", "").startswith(p["colour"]), (p, read.attributes)
        cfg = TextToAvatarConfig(prompt=p["prompt"], output_dir=str(out / f"prompt_{p['index']:02d}"), style=p["style"],
                                 resolution=args.resolution, prior=prior, seed=p["seed"], views=len(YAWS),
                                 turntable_frames=0, mesh_resolution=0, overwrite=True,
                                 pipeline=PipelineConfig(preset="procedural"))
        res = run_text_to_avatar(cfg, avatar_pipeline=pipe)
        assert [float(y) for y in res.yaws] == list(YAWS), res.yaws
        prior_views = {y: np.asarray(Image.open(path).convert("RGB")) for y, path in zip(res.yaws, res.views)}
        control_views = dict(zip(YAWS, render_w(G, control_w[p["index"]:p["index"] + 1], list(YAWS),
                                                seeds=[p["seed"]])[0]))
        size = prior_views[0.0].shape[0]
        Image.fromarray(np.concatenate(list(control_views.values()), axis=1)).save(res.output_dir / "control_views.png")
        for view, yaw in {"front": 0.0, **VIEWS}.items():
            mask, refs = hair_truth(res.identity, yaw, size)
            row = {"prompt": p["index"], "text": p["prompt"], "style": p["style"], "asked": p["colour"], "view": view,
                   "hair_px": int(mask.sum())}
            if mask.sum() >= MIN_HAIR_PX:
                for arm, image in (("prior", prior_views[yaw]), ("control", control_views[yaw])):
                    got, mean = read_colour(image, mask, refs)
                    row[arm] = got
                    row[f"{arm}_mean_rgb"] = [round(float(c), 1) for c in mean]
            rows.append(row)
        done = [r for r in rows if r["prompt"] == p["index"] and "prior" in r]
        print(f"[{time.time() - t_start:5.0f}s] #{p['index']:02d} {p['prompt']!r} ({p['style']}): "
              + ", ".join(f"{r['view']} prior={r['prior']} control={r['control']}" for r in done), flush=True)

    def tally(view_names):
        scored = [r for r in rows if r["view"] in view_names and "prior" in r]
        skipped = sum(1 for r in rows if r["view"] in view_names and "prior" not in r)
        p_hit = sum(r["prior"] == r["asked"] for r in scored)
        c_hit = sum(r["control"] == r["asked"] for r in scored)
        only_p = sum(r["prior"] == r["asked"] and r["control"] != r["asked"] for r in scored)
        only_c = sum(r["control"] == r["asked"] and r["prior"] != r["asked"] for r in scored)
        return {"scored": len(scored), "left_out_no_hair_visible": skipped, "prior_matches": p_hit,
                "control_matches": c_hit, "prior_rate": p_hit / max(1, len(scored)),
                "control_rate": c_hit / max(1, len(scored)), "only_prior": only_p, "only_control": only_c,
                "sign_test_p": binom_two_sided(only_p, only_p + only_c)}

    # Per prompt (the unit that is independent; its three views are not): the asked colour at >= 2 of its
    # scored side/back views.
    per_prompt = {"prior": 0, "control": 0, "scored": 0, "only_prior": 0, "only_control": 0}
    for p in plist:
        scored = [r for r in rows if r["prompt"] == p["index"] and r["view"] in VIEWS and "prior" in r]
        if len(scored) < 2:
            continue
        hits = {arm: sum(r[arm] == r["asked"] for r in scored) >= 2 for arm in ("prior", "control")}
        per_prompt["scored"] += 1
        per_prompt["prior"] += hits["prior"]
        per_prompt["control"] += hits["control"]
        per_prompt["only_prior"] += hits["prior"] and not hits["control"]
        per_prompt["only_control"] += hits["control"] and not hits["prior"]
    per_prompt["sign_test_p"] = binom_two_sided(per_prompt["only_prior"], per_prompt["only_prior"] + per_prompt["only_control"])

    groups = {"side + back": list(VIEWS), "left side": ["left side"], "right side": ["right side"],
              "back": ["back"], "front (painted view; not the claim)": ["front"]}
    table = {name: tally(v) for name, v in groups.items()}
    per_colour = {}
    for c in COLOURS:
        scored = [r for r in rows if r["asked"] == c and r["view"] in VIEWS and "prior" in r]
        per_colour[c] = {"scored": len(scored), "prior": sum(r["prior"] == c for r in scored),
                         "control": sum(r["control"] == c for r in scored)}
    read_as = {arm: {c: sum(r.get(arm) == c for r in rows if r["view"] in VIEWS) for c in COLOURS}
               for arm in ("prior", "control")}
    result = {"prior": prior, "prompts": len(plist), "resolution": args.resolution, "min_hair_px": MIN_HAIR_PX,
              "control_seed": CONTROL_SEED, "wall_s": round(time.time() - t_start, 1), "table": table,
              "per_prompt_majority_side_back": per_prompt, "per_colour_side_back": per_colour, "colours_read_side_back": read_as, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))

    print(f"\n{len(plist)} prompts, prior {prior}, {result['wall_s']} s")
    print("| views | scored | left out (no hair visible) | prior matches | control (random w) matches | "
          "only prior / only control | sign test p |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t in table.items():
        print(f"| {name} | {t['scored']} | {t['left_out_no_hair_visible']} | {t['prior_matches']} "
              f"({t['prior_rate']:.0%}) | {t['control_matches']} ({t['control_rate']:.0%}) | "
              f"{t['only_prior']} / {t['only_control']} | {t['sign_test_p']:.2f} |")
    pp = per_prompt
    print(f"| prompts: asked colour at >= 2 of 3 side/back views | {pp['scored']} | - | {pp['prior']} "
          f"({pp['prior'] / max(1, pp['scored']):.0%}) | {pp['control']} ({pp['control'] / max(1, pp['scored']):.0%}) | "
          f"{pp['only_prior']} / {pp['only_control']} | {pp['sign_test_p']:.2f} |")
    print("\nper asked colour (side + back): " + ", ".join(f"{c} {v['prior']}/{v['scored']} vs {v['control']}/{v['scored']}"
                                                    for c, v in per_colour.items()))
    print("colours read (side + back), prior: " + json.dumps(read_as["prior"]))
    print("colours read (side + back), control: " + json.dumps(read_as["control"]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        sys.exit(f"measure: error: {exc}")
