"""Does text-to-avatar's *avatar* show the hair colour the prompt asked for, more often than random avatars do?

With the procedural painter the painted front view is right by construction (the prompt's
"red hair" sets the painter's hair colour), whatever the prior and the GAN do. So this scores
the avatar's renders at the side and back views, where only the 3D GAN (through the prior's w)
can put the hair colour, and compares them with a control: as many random-w avatars (z ~ N(0, I)
through the generator's mapping with the front camera, truncation 1: the distribution the
prior's pairs were drawn from), scored against the same prompts the same way; and a second
control for the prior's own habits (a lean to one colour whatever the input): prompt i scored on
the prior's avatar of prompt i+1, which asked another colour.

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

    .venv/bin/python evaluation/text_to_avatar/measure.py --demo outputs/demo --out outputs/t2a_measure
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
    ap.add_argument("--demo", default="outputs/demo", help="a finished demo folder (its prior/<run>/prior is used)")
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

    rows, prior_views, truth = [], {}, {}
    for p in plist:
        read = match_attributes(p["prompt"])
        assert read.attributes.get("hair_color", "").startswith(p["colour"]), (p, read.attributes)
        cfg = TextToAvatarConfig(prompt=p["prompt"], output_dir=str(out / f"prompt_{p['index']:02d}"), style=p["style"],
                                 resolution=args.resolution, prior=prior, seed=p["seed"], views=len(YAWS),
                                 turntable_frames=0, mesh_resolution=0, overwrite=True,
                                 pipeline=PipelineConfig(preset="procedural"))
        res = run_text_to_avatar(cfg, avatar_pipeline=pipe)
        assert [float(y) for y in res.yaws] == list(YAWS), res.yaws
        prior_views[p["index"]] = {y: np.asarray(Image.open(path).convert("RGB")) for y, path in zip(res.yaws, res.views)}
        control_views = dict(zip(YAWS, render_w(G, control_w[p["index"]:p["index"] + 1], list(YAWS),
                                                seeds=[p["seed"]])[0]))
        size = control_views[0.0].shape[0]
        Image.fromarray(np.concatenate(list(control_views.values()), axis=1)).save(res.output_dir / "control_views.png")
        for view, yaw in {"front": 0.0, **VIEWS}.items():
            mask, refs = truth[p["index"], view] = hair_truth(res.identity, yaw, size)
            row = {"prompt": p["index"], "text": p["prompt"], "style": p["style"], "asked": p["colour"], "view": view,
                   "hair_px": int(mask.sum())}
            if mask.sum() >= MIN_HAIR_PX:
                for arm, image in (("prior", prior_views[p["index"]][yaw]), ("control", control_views[yaw])):
                    got, mean = read_colour(image, mask, refs)
                    row[arm] = got
                    row[f"{arm}_mean_rgb"] = [round(float(c), 1) for c in mean]
            rows.append(row)
        done = [r for r in rows if r["prompt"] == p["index"] and "prior" in r]
        print(f"[{time.time() - t_start:5.0f}s] #{p['index']:02d} {p['prompt']!r} ({p['style']}): "
              + ", ".join(f"{r['view']} prior={r['prior']} control={r['control']}" for r in done), flush=True)

    # Second control, for the prior's own habits (it may lean to one colour whatever the input): prompt i scored
    # on the prior's avatar of prompt i+1, which asked another colour (the prompts cycle through the 8 colours).
    for row in rows:
        if "prior" in row:
            other = (row["prompt"] + 1) % len(plist)
            assert plist[other]["colour"] != row["asked"]
            mask, refs = truth[row["prompt"], row["view"]]
            got, _ = read_colour(prior_views[other][{"front": 0.0, **VIEWS}[row["view"]]], mask, refs)
            row["shuffled"] = got

    arms = ("prior", "control", "shuffled")

    def tally(scored, skipped=0):
        t = {"scored": len(scored), "left_out_no_hair_visible": skipped}
        for arm in arms:
            t[f"{arm}_matches"] = sum(r[arm] for r in scored)
            t[f"{arm}_rate"] = t[f"{arm}_matches"] / max(1, len(scored))
        for other in ("control", "shuffled"):
            a = sum(r["prior"] and not r[other] for r in scored)
            b = sum(r[other] and not r["prior"] for r in scored)
            t[f"prior_not_{other}"], t[f"{other}_not_prior"] = a, b
            t[f"sign_test_p_vs_{other}"] = binom_two_sided(a, a + b)
        return t

    def hits(rs):
        return [{arm: r[arm] == r["asked"] for arm in arms} for r in rs]

    groups = {"side + back": list(VIEWS), "left side (yaw 90)": ["left side"], "right side (yaw -90)": ["right side"],
              "back (yaw 180)": ["back"], "front (the painted view; not the claim)": ["front"]}
    table = {name: tally(hits([r for r in rows if r["view"] in v and "prior" in r]),
                         sum(1 for r in rows if r["view"] in v and "prior" not in r)) for name, v in groups.items()}
    # Per prompt (the independent unit; its three views are not): the asked colour at >= 2 of its 3 side/back views.
    prompt_hits = []
    for p in plist:
        scored = [h for h in hits([r for r in rows if r["prompt"] == p["index"] and r["view"] in VIEWS and "prior" in r])]
        if len(scored) == len(VIEWS):
            prompt_hits.append({arm: sum(h[arm] for h in scored) >= 2 for arm in arms})
    table["prompts: asked colour at >= 2 of 3 side/back views"] = tally(prompt_hits)

    side_back = [r for r in rows if r["view"] in VIEWS and "prior" in r]
    per_colour = {c: {"scored": sum(r["asked"] == c for r in side_back),
                      **{arm: sum(r["asked"] == c and r[arm] == c for r in side_back) for arm in arms}} for c in COLOURS}
    read_as = {arm: {c: sum(r[arm] == c for r in side_back) for c in COLOURS} for arm in arms}
    result = {"prior": prior, "prompts": len(plist), "resolution": args.resolution, "min_hair_px": MIN_HAIR_PX,
              "control_seed": CONTROL_SEED, "wall_s": round(time.time() - t_start, 1), "table": table,
              "per_colour_side_back": per_colour, "colours_read_side_back": read_as, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))

    print(f"\n{len(plist)} prompts, prior {prior}, {result['wall_s']} s")
    print("| views | scored | prior matches | control: random w | control: prior avatar of another prompt | "
          "prior only / random-w only (p) | prior only / other-prompt only (p) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t in table.items():
        print(f"| {name} | {t['scored']} | {t['prior_matches']} ({t['prior_rate']:.0%}) | {t['control_matches']} "
              f"({t['control_rate']:.0%}) | {t['shuffled_matches']} ({t['shuffled_rate']:.0%}) | "
              f"{t['prior_not_control']} / {t['control_not_prior']} (p = {t['sign_test_p_vs_control']:.2f}) | "
              f"{t['prior_not_shuffled']} / {t['shuffled_not_prior']} (p = {t['sign_test_p_vs_shuffled']:.2f}) |")
    left_out = table["side + back"]["left_out_no_hair_visible"]
    print(f"\n(side/back views left out, no hair visible: {left_out})")
    print("per asked colour (side + back; prior / random w / other prompt, of n): "
          + ", ".join(f"{c} {v['prior']}/{v['control']}/{v['shuffled']} of {v['scored']}" for c, v in per_colour.items()))
    for arm in arms:
        print(f"colours read (side + back), {arm}: " + json.dumps(read_as[arm]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        sys.exit(f"measure: error: {exc}")
