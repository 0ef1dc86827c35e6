"""Image-to-avatar accuracy in the procedural world, against three baselines (issue #18).

For each of ``--identities`` held-out truth identities (the procedural
painter's, from a seed stream no dataset, metric or encoder training uses):

1. its clean front render (at the generator's resolution, 64 px here) is the input;
2. four ways to choose the avatar's w:
   * ``prior``: the trained image-to-avatar pipeline (encoder -> W-space
     diffusion prior, one sample per input, seed = identity index);
   * ``random``: a w mapped from a random z (what the generator paints
     without looking at the input);
   * ``mean``: the generator's average w (one avatar for every input);
   * ``nearest``: the w of the training pair whose embedding, in the same
     encoder, is nearest to the input's (cosine): retrieval, no diffusion;
3. the avatar is rendered at the identity's held-out truth cameras (left and
   right profile, back; yaw 90 / -90 / 180) and compared with the truth there:
   * **masked colour error**: mean absolute RGB difference (0-255) over the
     truth's silhouette (lower is better);
   * **silhouette IoU** (generator opacity > 0.5 vs truth mask);
   * **view consistency**: the share of the three renders that the world's
     view classifier (:mod:`avatar3d.evaluation.truth`) puts in the camera's
     group;
   each per identity (mean over the three cameras), with the mean over
   identities, and for ``prior`` minus each baseline a 95% paired bootstrap
   interval (resampling identities);
4. the rule (:func:`prior_wins`): the prior beats a baseline when it is
   better on colour and silhouette and not worse on view consistency by
   more than 0.05 (a view-consistent generator gives ~1.0 there for any w);
5. beside them, a ceiling that is not a method: per identity, the best of
   ``--oracle-pool`` training pairs' w by silhouette, chosen with the truth
   (what the generator can paint at best; ``oracle_silhouette``).

Also the paper's two special cases, scored the same way and shown: the input
at a large yaw (60 deg instead of the front), and an out-of-domain input (the
front render turned into a grey pencil drawing: a style the painter never
produced).

    python evaluation/image_to_avatar/measure_accuracy.py --prior outputs/i2a/prior/prior \\
        --pairs outputs/i2a/pairs --out evaluation/image_to_avatar/results
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from avatar3d.evaluation.options import TruthOptions  # noqa: E402
from avatar3d.evaluation.truth import (HELDOUT_CAMERAS, HELDOUT_SEED, heldout_identities, iou,  # noqa: E402
                                       render_truth, synthesis_with_masks, train_view_classifier)
from avatar3d.prior.pairs import read_pairs  # noqa: E402
from avatar3d.prior.pipeline import ImageToAvatarPipeline  # noqa: E402
from avatar3d.prior.views import broadcast_w, map_front, seeded_z  # noqa: E402
from avatar3d.scene.cameras import camera_label  # noqa: E402
from avatar3d.scene.pose_bins import view_group  # noqa: E402
from world_encoder import STYLES  # noqa: E402

EVAL_SEED = HELDOUT_SEED + 0x5000   # the test identities' stream (no dataset, metric or encoder uses it)
METHODS = ("prior", "nearest", "mean", "random")  # the prior first, then the baselines it is compared with
METRICS = {"colour_error": "lower", "silhouette_iou": "higher", "view_consistency": "higher"}


def render_with_masks(G, w: torch.Tensor, yaw: float, pitch: float = 0.0, seed: int = 0):
    """Every w from one camera -> (images uint8 (N, S, S, 3), masks bool (N, S, S)), masks as the truth metrics
    take them."""
    device = next(G.parameters()).device
    cams = torch.tensor(camera_label(yaw, pitch), dtype=torch.float32, device=device).reshape(1, 25).expand(len(w), 25)
    torch.manual_seed(seed)  # the ray jitter
    return synthesis_with_masks(G, broadcast_w(G, w.to(device)), cams)


def pencil(image: np.ndarray) -> np.ndarray:
    """A grey pencil drawing of an image (edges, inverted, on white): a look the painter never produces."""
    grey = ImageOps.grayscale(Image.fromarray(image))
    edges = ImageOps.invert(grey.filter(ImageFilter.FIND_EDGES))
    sketch = Image.blend(edges, grey.point(lambda v: 255 if v > 200 else 215), 0.35)
    return np.asarray(sketch.convert("RGB"))


def score(G, classifier, w: torch.Tensor, truth: dict, seed: int) -> dict[str, np.ndarray]:
    """Per-identity metrics of avatars ``w`` at the held-out cameras (and the renders, for pictures)."""
    colour, sil, views, renders = [], [], [], {}
    for name, (yaw, pitch) in HELDOUT_CAMERAS.items():
        images, masks = render_with_masks(G, w, yaw, pitch, seed)
        t_img, t_mask = truth[name]
        diff = np.abs(images.astype(np.float64) - t_img.astype(np.float64)).mean(-1)
        colour.append((diff * t_mask).sum(axis=(1, 2)) / np.maximum(t_mask.sum(axis=(1, 2)), 1))
        sil.append(iou(masks, t_mask))
        views.append(classifier.predict(images) == view_group(yaw))
        renders[name] = images
    return {"colour_error": np.mean(colour, 0), "silhouette_iou": np.mean(sil, 0),
            "view_consistency": np.mean(views, 0), "renders": renders}


# The decision per baseline: the prior must be better on colour and silhouette (the 95% interval of the
# difference excludes 0 in its favour) and not worse on view consistency by more than this margin. View
# consistency gets a margin, not a "better": a view-consistent generator gives ~1.0 for every w (mean and
# random w included), so no w can beat another there; it can only lose.
DECIDING = ("colour_error", "silhouette_iou")
VIEW_MARGIN = 0.05


def prior_wins(versus: dict) -> bool:
    """``versus``: metric -> {"ci95": [lo, hi]} of prior minus one baseline -> does the prior win (rule above)?"""
    better = all((versus[m]["ci95"][1] < 0) if METRICS[m] == "lower" else (versus[m]["ci95"][0] > 0) for m in DECIDING)
    return better and versus["view_consistency"]["ci95"][0] > -VIEW_MARGIN


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of mean(a - b) over resampled identities."""
    rng = np.random.default_rng(seed)
    d = a - b
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def nearest_w(pairs, embeddings: torch.Tensor) -> torch.Tensor:
    bank = F.normalize(torch.from_numpy(pairs.embedding), dim=-1)
    pick = (embeddings @ bank.T).argmax(1)
    return torch.from_numpy(pairs.w)[pick]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="a trained prior folder (train-prior's <run>/prior)")
    p.add_argument("--pairs", required=True, help="the pairs folder it was trained on (for the nearest-w baseline)")
    p.add_argument("--generator", default=None, help="generator snapshot (default: the one in the prior folder)")
    p.add_argument("--identities", type=int, default=64)
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the prior's own")
    p.add_argument("--large-yaw", type=float, default=60.0)
    p.add_argument("--classifier-seed", type=int, default=0)
    p.add_argument("--classifier-train", type=int, default=TruthOptions.classifier_train, help="(tests: fewer)")
    p.add_argument("--classifier-steps", type=int, default=TruthOptions.classifier_steps, help="(tests: fewer)")
    p.add_argument("--out", required=True, help="folder for results.json and the pictures")
    p.add_argument("--show", type=int, default=6, help="identities in the picture")
    p.add_argument("--oracle-pool", type=int, default=1024,
                   help="pairs searched for each identity's best-silhouette w, chosen with the truth (0 = skip)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. The pipeline, the pairs, the view classifier and the test identities' truth.
    pipe = ImageToAvatarPipeline.from_pretrained(args.prior, generator=args.generator)
    G = pipe.generator.eval()
    pairs = read_pairs(args.pairs)
    classifier = train_view_classifier(STYLES, num_train=args.classifier_train, steps=args.classifier_steps,
                                       seed=args.classifier_seed)
    n = args.identities
    size = G.cfg.output_resolution  # truth at the generator's resolution (64 px in this world's GAN)
    idents = heldout_identities(STYLES, n, seed=EVAL_SEED)
    front, _ = render_truth(idents, np.zeros(n), np.zeros(n), size)
    turned, _ = render_truth(idents, np.full(n, args.large_yaw), np.zeros(n), size)
    truth = {name: render_truth(idents, np.full(n, yaw), np.full(n, pitch), size)
             for name, (yaw, pitch) in HELDOUT_CAMERAS.items()}
    sketches = np.stack([pencil(im) for im in front])

    # 2. One w per identity from each method (and the prior from the two special inputs).
    def prior_w(images):
        return pipe(list(images), seed=0, guidance_scale=args.guidance_scale, yaws=[0.0]).w

    ws = {"prior": prior_w(front),
          "nearest": nearest_w(pairs, pipe.image_encoder.embed(list(front))),
          "mean": G.mapping_net.w_avg.detach().float().cpu()[None].expand(n, -1).clone(),
          "random": map_front(G, seeded_z(G, range(10_000, 10_000 + n))).w.cpu(),
          f"prior_from_yaw{args.large_yaw:.0f}": prior_w(turned),
          "prior_from_pencil_drawing": prior_w(sketches)}

    # 3. Score every method at the held-out cameras; paired intervals of the prior against each baseline.
    scores = {name: score(G, classifier, w, truth, seed=1) for name, w in ws.items()}
    table = {name: {m: float(s[m].mean()) for m in METRICS} for name, s in scores.items()}
    versus = {}
    for base in METHODS[1:]:
        versus[base] = {m: {"prior_minus_baseline": float((scores["prior"][m] - scores[base][m]).mean()),
                            "ci95": paired_bootstrap(scores["prior"][m], scores[base][m])}
                        for m in METRICS}
        versus[base]["prior_wins"] = prior_wins(versus[base])
    if args.oracle_pool:
        # What the generator can paint at best: per identity, the pair w (of the first oracle_pool) whose renders
        # agree best with that identity's truth silhouettes, chosen with the truth. Not a method: a ceiling.
        pool = torch.from_numpy(pairs.w[:args.oracle_pool])
        sil = np.zeros((len(pool), n))
        for name, (yaw, pitch) in HELDOUT_CAMERAS.items():
            masks = np.concatenate([render_with_masks(G, pool[i:i + 64], yaw, pitch, seed=1)[1]
                                    for i in range(0, len(pool), 64)])
            for j in range(0, len(pool), 128):
                sil[j:j + 128] += iou(masks[j:j + 128, None], truth[name][1][None]) / len(HELDOUT_CAMERAS)
        best = sil.argmax(0)
        scores["oracle_silhouette"] = score(G, classifier, pool[best], truth, seed=1)
        table["oracle_silhouette"] = {m: float(scores["oracle_silhouette"][m].mean()) for m in METRICS}
    truth_ref = {"view_consistency_of_truth": float(np.mean(
        [classifier.predict(truth[name][0]) == view_group(yaw) for name, (yaw, _) in HELDOUT_CAMERAS.items()]))}

    # 4. Pictures: inputs, truth and each method's avatar at the left profile and the back.
    k = min(args.show, n)
    rows = []
    for i in range(k):
        cells = [front[i], truth["left"][0][i], truth["back"][0][i]]
        for name in METHODS:
            cells += [scores[name]["renders"]["left"][i], scores[name]["renders"]["back"][i]]
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize((size * 11 * 2, size * k * 2), Image.NEAREST).save(
        out / "heldout_identities.png")
    rows = []
    for i in range(k):
        cells = [turned[i], *(scores[f"prior_from_yaw{args.large_yaw:.0f}"]["renders"][c][i] for c in ("left", "back")),
                 sketches[i], *(scores["prior_from_pencil_drawing"]["renders"][c][i] for c in ("left", "back")),
                 truth["left"][0][i], truth["back"][0][i]]
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize((size * 8 * 2, size * k * 2), Image.NEAREST).save(
        out / "special_inputs.png")

    result = {
        "what": "image-to-avatar on held-out identities of the procedural world (images painted by the procedural "
                "painter, not by Stable Diffusion); avatars scored at the identity's held-out truth cameras",
        "identities": n, "cameras": {k: list(v) for k, v in HELDOUT_CAMERAS.items()}, "size": size,
        "prior": str(args.prior), "pairs": str(args.pairs), "num_pairs": int(len(pairs.w)),
        "encoder": pipe.image_encoder.name, "sampling": {**pipe.defaults, "guidance_scale": args.guidance_scale
                                                          or pipe.defaults["guidance_scale"], "seed": 0},
        "classifier": {"seed": args.classifier_seed, "accuracy": classifier.accuracy,
                       "accuracy_blurred": classifier.accuracy_blurred},
        "metrics": METRICS, "table": table, "prior_vs": versus, "reference": truth_ref,
        "rule": {"deciding": list(DECIDING), "view_consistency_margin": VIEW_MARGIN},
        "oracle_pool": args.oracle_pool,
        "special_inputs": {"large_yaw_deg": args.large_yaw, "out_of_domain": "pencil drawing of the front render "
                           "(grey edges on white; the painter never paints this)"},
        "seconds": round(time.perf_counter() - t0, 1),
        "command": "python evaluation/image_to_avatar/measure_accuracy.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'method':28s} " + " ".join(f"{m:>17s}" for m in METRICS))
    for name, row in table.items():
        print(f"{name:28s} " + " ".join(f"{row[m]:17.3f}" for m in METRICS))
    for base, v in versus.items():
        print(f"prior - {base:8s}: " + "  ".join(
            f"{m} {v[m]['prior_minus_baseline']:+.3f} [{v[m]['ci95'][0]:+.3f}, {v[m]['ci95'][1]:+.3f}]" for m in METRICS)
            + f"  prior wins: {v['prior_wins']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
