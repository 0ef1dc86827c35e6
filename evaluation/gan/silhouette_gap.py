"""Why a generator's silhouette agreement sits below the mean-silhouette baseline: where the IoU is lost.

For each snapshot, with the evaluation stage's truth world (``TruthOptions`` defaults, truth seed 0):

1. per held-out camera (left, right, back): the generator's IoU with its matched identity beside the
   mean-silhouette baseline's and the strangers' (truth identities outside the world scored as if generated);
2. the front outline fit the match rests on (``sil_front_match``), generator against strangers;
3. size: mean silhouette area of the generator's avatars against the held-out identities';
4. explanations tested and ruled in or out: the baseline fit in sample (its mean silhouette taken from
   the strangers instead of the held-out identities it is scored on), a size bias (the generator's masks
   dilated by one pixel) and the resolution of the generator's opacity (the strangers' masks pooled to the neural rendering
   resolution and brought back with the same nearest upsampling as the generator's);
5. diversity: how alike the avatars' front outlines are to each other (mean pairwise IoU) against the
   strangers', and how many distinct held-out identities the avatars and the strangers are matched to.
   Outlines more alike than the world's, matched to few identities, say the generator paints too few
   shapes; outlines as varied as the world's but fitting it poorly say its shapes are off the world's;
6. the outline of the final image against the opacity's: the avatars' silhouettes taken from their 64 px
   images (pixels darker than near-white on the white background) instead of the 32 px accumulated
   opacity. If the super-resolution network drew the identity's outline and the density did not, the
   image outline would agree better than the opacity's;
7. placement: the IoU at each held-out camera after the best shift of every silhouette by up to
   ``MAX_SHIFT`` px (each avatar against its matched identity; the baseline's mean silhouette against each
   identity; the strangers against theirs), and the mean signed shift. At a side camera a horizontal
   shift is a move along the depth axis, which the front view the match rests on cannot see: if the
   avatars' side outlines are right in shape but sit too far forward or back, their agreement recovers
   under the shift (and the signed shifts at left and right are opposite); if the shape is off, the shift
   recovers little of the gap to the baseline (whose own recovery under the same freedom is printed beside);
8. where: per held-out camera, the share of avatars whose silhouette covers a pixel its identity leaves
   empty (excess, red) and leaves empty a pixel its identity covers (missing, blue), drawn over the
   identities' mean outline, one row per snapshot and one for the baseline and the strangers
   (``--out`` with ``.png``);
9. each outline on its own: per held-out camera, the IoU of every silhouette with the identity nearest to it
   *at that camera* (not the one matched at the front), and with the identities' mean silhouette. If the
   avatars' side outlines are world-like but belong to other identities than their fronts do, this recovers
   the strangers' level and the loss is 3D consistency; if it stays low, the outlines are shapes no identity
   has, and the loss is in what the generator paints at that camera at all.

    .venv/bin/python evaluation/gan/silhouette_gap.py --data outputs/demo/dataset \\
        shipped=jobs/assets/gan_world/snapshot.safetensors

Writes ``results/silhouette_gap.json`` and prints a Markdown table. CPU, about a minute per snapshot.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation

from avatar3d.evaluation.options import TruthOptions, add_heldout_attributes_argument
from avatar3d.evaluation.truth import (HELDOUT_CAMERAS, MATCH_CAMERA, TruthWorld, generator_views, iou,
                                       mean_silhouette)
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.runtime import cache_dir

RESULTS = Path(__file__).parent / "results"
IMAGE_THRESHOLD = 225  # an image pixel is the avatar's when any channel is below this (white background)
MAX_SHIFT = 4  # px at 64 px: the placement step's search, about a tenth of a head's width


def scored_pairs(world: TruthWorld, masks: dict[str, np.ndarray] | None = None):
    """Per held-out camera, (silhouettes, the truth masks they are scored against): each avatar against the
    identity the agreement matched at the front; ``masks=None``: the mean silhouette against every identity."""
    if masks is None:
        return {name: (np.broadcast_to(mean_silhouette(world.masks[name]), world.masks[name].shape), world.masks[name])
                for name in HELDOUT_CAMERAS}
    _, match = world.silhouette_agreement(masks)
    return {name: (masks[name], world.masks[name][match]) for name in HELDOUT_CAMERAS}


def per_camera(world: TruthWorld, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """IoU with the identity the agreement matched at the front, per held-out camera."""
    return {name: float(iou(gen, truth).mean()) for name, (gen, truth) in scored_pairs(world, masks).items()}


def baseline_per_camera(world: TruthWorld, fit_on: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The mean-silhouette baseline per held-out camera; ``fit_on``: take the mean silhouette of these masks
    (e.g. the strangers') instead of the held-out identities' own, i.e. fit out of sample."""
    fit_on = world.masks if fit_on is None else fit_on
    return {name: float(iou(mean_silhouette(fit_on[name])[None], world.masks[name]).mean())
            for name in HELDOUT_CAMERAS}


def through_resolution(masks: dict[str, np.ndarray], neural: int) -> dict[str, np.ndarray]:
    """Masks pooled to ``neural`` px (area > 0.5) and upsampled back (nearest), as a generator's opacity is."""
    out = {}
    for name, m in masks.items():
        t = torch.from_numpy(m.astype(np.float32))[:, None]
        low = F.interpolate(t, size=(neural, neural), mode="area") > 0.5
        out[name] = F.interpolate(low.float(), size=m.shape[-2:], mode="nearest")[:, 0].numpy() > 0.5
    return out


def diversity(world: TruthWorld, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean pairwise front IoU among the avatars (lower = more varied) and distinct identities matched."""
    front = masks["front"]
    pairs = iou(front[:, None], front[None])
    off_diagonal = pairs[~np.eye(len(front), dtype=bool)]
    _, match = world.silhouette_agreement(masks)
    return {"pairwise_front_iou": float(off_diagonal.mean()), "identities_matched": int(len(set(match.tolist()))),
            "avatars": int(len(front))}


def shifted(masks: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(N, S, S) masks moved by ``dy`` rows and ``dx`` columns; what leaves the frame is lost, empty comes in."""
    out = np.zeros_like(masks)
    h, w = masks.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        masks[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def best_shift(masks: np.ndarray, targets: np.ndarray, max_shift: int = MAX_SHIFT) -> dict[str, float]:
    """Each mask against its target after the shift (|dy|, |dx| <= ``max_shift``) that maximises their IoU ->
    mean IoU unshifted and at the best shift, and the mean signed best shift (dx > 0: to the image's right)."""
    shifts = sorted(((dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)),
                    key=lambda s: (abs(s[0]) + abs(s[1]), s))  # no shift first: ties go to the smallest move
    scores = np.stack([iou(shifted(masks, dy, dx), targets) for dy, dx in shifts])  # (shifts, N)
    best = scores.argmax(axis=0)  # the first of equal scores
    moves = np.array(shifts)[best]
    return {"iou": float(iou(masks, targets).mean()), "iou_shifted": float(scores.max(axis=0).mean()),
            "dx": float(moves[:, 1].mean()), "dy": float(moves[:, 0].mean())}


def placement(world: TruthWorld, masks: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Per held-out camera, :func:`best_shift` of ``masks`` (matched at the front, as the agreement matches) against
    their identities; ``masks=None``: the baseline's mean silhouette against every identity."""
    return {name: best_shift(gen, truth) for name, (gen, truth) in scored_pairs(world, masks).items()}


def own_nearest(world: TruthWorld, masks: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per held-out camera: each silhouette's IoU with the identity nearest to it at that camera, and with the
    identities' mean silhouette (how world-like an outline is by itself, whoever's it is)."""
    out = {}
    for name in HELDOUT_CAMERAS:
        pair = iou(masks[name][:, None], world.masks[name][None])  # (avatars, identities)
        mean = mean_silhouette(world.masks[name])[None]
        out[name] = {"nearest": float(pair.max(axis=1).mean()), "mean_silhouette": float(iou(mean, masks[name]).mean())}
    return out


def where_lost(world: TruthWorld, masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per held-out camera, (2, S, S): the share of avatars covering a pixel their matched identity leaves empty
    (excess) and leaving empty one it covers (missing); ``masks=None``: the mean silhouette against every identity."""
    return {name: np.stack([(gen & ~truth).mean(axis=0), (~gen & truth).mean(axis=0)])
            for name, (gen, truth) in scored_pairs(world, masks).items()}


def where_picture(world: TruthWorld, rows: dict[str, dict[str, np.ndarray]], path: Path, scale: int = 3) -> None:
    """:func:`where_lost` maps as one picture: a row per entry, a column per held-out camera; red = excess,
    blue = missing (full colour: every avatar), grey = the identities' mean outline."""
    from PIL import Image, ImageDraw

    outlines = {name: mean_silhouette(world.masks[name]) for name in HELDOUT_CAMERAS}
    tiles = []
    for maps in rows.values():
        row = []
        for name, outline in outlines.items():
            excess, missing = maps[name]
            rgb = np.full(excess.shape + (3,), 255.0)
            rgb[outline] = 215.0
            rgb[..., 1] *= 1 - np.maximum(excess, missing)  # red where excess, blue where missing
            rgb[..., 2] *= 1 - excess
            rgb[..., 0] *= 1 - missing
            row.append(np.pad(rgb.astype(np.uint8), ((1, 1), (1, 1), (0, 0)), constant_values=128))
        tiles.append(np.concatenate(row, axis=1))
    grid = Image.fromarray(np.concatenate(tiles, axis=0)).resize(
        (tiles[0].shape[1] * scale, len(tiles) * tiles[0].shape[0] * scale), Image.NEAREST)
    label_w = 150
    canvas = Image.new("RGB", (grid.width + label_w, grid.height + 14), "white")
    canvas.paste(grid, (label_w, 14))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(HELDOUT_CAMERAS):
        draw.text((label_w + j * grid.width // len(HELDOUT_CAMERAS) + 4, 1), name, fill="black")
    for i, label in enumerate(rows):
        draw.text((2, 14 + i * grid.height // len(rows) + 4), label, fill="black")
    canvas.save(path)


def image_outlines(G, num_avatars: int, seed: int, threshold: int = IMAGE_THRESHOLD):
    """(silhouettes from the final images, from the opacity) of the avatars ``generator_masks`` renders: one ``z``
    per avatar, mapped with the front camera, at the front and held-out cameras. Image silhouette: any channel
    below ``threshold`` (the background is white)."""
    if not G.cfg.white_back:
        raise ValueError("image outlines need a generator trained with white_back: true (its background is white)")
    z = torch.randn(num_avatars, G.z_dim, generator=torch.Generator().manual_seed(seed))
    images, opacity = {}, {}
    for name, (yaw, pitch) in {"front": MATCH_CAMERA, **HELDOUT_CAMERAS}.items():
        rgb, opacity[name] = generator_views(G, [yaw] * num_avatars, [pitch] * num_avatars, seed, z=z,
                                             condition=MATCH_CAMERA)
        images[name] = rgb.min(axis=-1) < threshold
    return images, opacity


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arms", nargs="+", help="NAME=SNAPSHOT")
    ap.add_argument("--data", required=True, help="a dataset of the procedural painter (its styles set the world)")
    ap.add_argument("--out", default=str(RESULTS / "silhouette_gap.json"))
    add_heldout_attributes_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    opts = TruthOptions(heldout_attributes=args.heldout_attributes)
    snaps = {name: (path, load_snapshot(path).generator) for name, path in (a.split("=", 1) for a in args.arms)}
    G0 = next(iter(snaps.values()))[1]
    world = TruthWorld.from_options(args.data, int(G0.cfg.output_resolution), opts, cache_dir())
    neural = int(G0.neural_rendering_resolution)

    # 1. The controls, once: the identity-blind mean and the strangers (also through the generator's resolution).
    strangers_low = through_resolution(world.strangers, neural)
    result = {"data": args.data, "truth_seed": opts.seed, "heldout_attributes": world.attributes,
              "num_identities": len(world.identities),
              "num_strangers": len(world.strangers["front"]), "neural_rendering_resolution": neural,
              "baseline": baseline_per_camera(world), "strangers": per_camera(world, world.strangers),
              "strangers_front_fit": world.front_match(world.strangers),
              "strangers_at_neural_resolution": world.silhouette_agreement(strangers_low)[0],
              "strangers_at_neural_resolution_per_camera": per_camera(world, strangers_low),
              "identity_area": {n: float(world.masks[n].sum(axis=(1, 2)).mean()) for n in world.masks},
              "strangers_diversity": diversity(world, world.strangers),
              "arms": {}, "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    result["baseline_mean"] = float(np.mean(list(result["baseline"].values())))
    # the baseline's mean silhouette is the held-out identities' own; fit on the strangers, it is out of sample
    result["baseline_fit_on_strangers"] = float(np.mean(list(baseline_per_camera(world, world.strangers).values())))
    result["strangers_mean"] = world.silhouette_agreement(world.strangers)[0]
    result["placement"] = {"max_shift": MAX_SHIFT, "baseline": placement(world),
                           "strangers": placement(world, world.strangers)}
    result["strangers_own_nearest"] = own_nearest(world, world.strangers)

    where: dict[str, dict[str, np.ndarray]] = {}
    # 2. Each generator: per camera, the front fit, its areas, and its masks grown by one pixel.
    for name, (path, G) in snaps.items():
        masks = world.generator_masks(G, opts.num_avatars, seed=opts.seed)
        grown = {n: np.stack([binary_dilation(m) for m in ms]) for n, ms in masks.items()}
        result["arms"][name] = {
            "snapshot": path, "agreement": world.silhouette_agreement(masks)[0], "per_camera": per_camera(world, masks),
            "front_fit": world.front_match(masks),
            "area": {n: float(m.sum(axis=(1, 2)).mean()) for n, m in masks.items()},
            "agreement_dilated_1px": world.silhouette_agreement(grown)[0],
            "diversity": diversity(world, masks),
            "placement": placement(world, masks),
            "own_nearest": own_nearest(world, masks),
        }
        where[name] = where_lost(world, masks)
        # ... and the outline of its final image beside its opacity's (the same avatars).
        from_image, opacity = image_outlines(G, opts.num_avatars, opts.seed)
        result["arms"][name]["image_outline"] = {
            "threshold": IMAGE_THRESHOLD, "agreement": world.silhouette_agreement(from_image)[0],
            "front_fit": world.front_match(from_image),
            "iou_with_opacity": float(np.mean([iou(from_image[n], opacity[n]).mean() for n in opacity])),
        }

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    where.update({"mean silhouette": where_lost(world), "strangers": where_lost(world, world.strangers)})
    result["where"] = {n: {c: {"excess": float(m[c][0].sum()), "missing": float(m[c][1].sum())} for c in m}
                       for n, m in where.items()}  # mean px per avatar
    where_picture(world, where, out.with_suffix(".png"))
    out.write_text(json.dumps(result, indent=2))
    cams = list(HELDOUT_CAMERAS)
    print("| silhouettes of | " + " | ".join(cams) + " | mean | front fit | area vs identities |")
    print("|---" * (len(cams) + 4) + "|")
    area = np.mean(list(result["identity_area"].values()))
    for name, arm in result["arms"].items():
        print(f"| {name} | " + " | ".join(f"{arm['per_camera'][c]:.3f}" for c in cams)
              + f" | {arm['agreement']:.3f} | {arm['front_fit']:.3f} | {np.mean(list(arm['area'].values())) / area:.2f} |")
    print("| mean silhouette (baseline) | " + " | ".join(f"{result['baseline'][c]:.3f}" for c in cams)
          + f" | {result['baseline_mean']:.3f} | | |")
    print("| strangers (ceiling) | " + " | ".join(f"{result['strangers'][c]:.3f}" for c in cams)
          + f" | {result['strangers_mean']:.3f} | {result['strangers_front_fit']:.3f} | |")
    print(f"mean silhouette fit on the strangers instead of the held-out identities: "
          f"{result['baseline_fit_on_strangers']:.3f} (in sample {result['baseline_mean']:.3f})")
    low = result["strangers_at_neural_resolution_per_camera"]
    print(f"strangers through {neural} px opacity: {result['strangers_at_neural_resolution']:.3f} ("
          + ", ".join(f"{c} {v:.3f}" for c, v in low.items()) + "); "
          + "; ".join(f"{n} dilated 1 px: {a['agreement_dilated_1px']:.3f}" for n, a in result["arms"].items()))
    d = result["strangers_diversity"]
    print(f"diversity (front outlines: mean pairwise IoU, distinct identities matched of {len(world.identities)}): "
          f"strangers {d['pairwise_front_iou']:.3f}, {d['identities_matched']} for {d['avatars']}; "
          + "; ".join(f"{n} {a['diversity']['pairwise_front_iou']:.3f}, {a['diversity']['identities_matched']} for "
                      f"{a['diversity']['avatars']}" for n, a in result["arms"].items()))
    print("outline of the final image (any channel < %d) vs the opacity's: " % IMAGE_THRESHOLD
          + "; ".join(f"{n} agreement {a['image_outline']['agreement']:.3f} (opacity {a['agreement']:.3f}), front fit "
                      f"{a['image_outline']['front_fit']:.3f}, IoU with the opacity {a['image_outline']['iou_with_opacity']:.3f}"
                      for n, a in result["arms"].items()))
    print(f"placement (IoU -> after the best shift of up to {MAX_SHIFT} px, mean signed dx in px):")
    print("| silhouettes of | " + " | ".join(cams) + " |")
    print("|---" * (len(cams) + 1) + "|")
    rows = {**{n: a["placement"] for n, a in result["arms"].items()},
            "mean silhouette (baseline)": result["placement"]["baseline"],
            "strangers (ceiling)": result["placement"]["strangers"]}
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(f"{cells[c]['iou']:.3f} -> {cells[c]['iou_shifted']:.3f} ({cells[c]['dx']:+.1f})"
                                          for c in cams) + " |")
    print("where (mean px per avatar: excess / missing):")
    for n, cells in result["where"].items():
        print(f"  {n}: " + "; ".join(f"{c} {v['excess']:.0f} / {v['missing']:.0f}" for c, v in cells.items()))
    print("each outline on its own (IoU with the nearest identity at that camera / with the mean silhouette):")
    print("| silhouettes of | " + " | ".join(cams) + " |")
    print("|---" * (len(cams) + 1) + "|")
    for name, cells in {**{n: a["own_nearest"] for n, a in result["arms"].items()},
                        "strangers (ceiling)": result["strangers_own_nearest"]}.items():
        print(f"| {name} | " + " | ".join(f"{cells[c]['nearest']:.3f} / {cells[c]['mean_silhouette']:.3f}" for c in cams) + " |")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
