"""Train an image encoder in the procedural world, for measuring image-to-avatar (issue #18).

The tiny preset's encoder is a random two-layer CLIP tower: conditioning the
prior on it tests a random projection of the pixels. This script trains a
small tower of CLIP's own architecture (``CLIPVisionModelWithProjection``,
4 layers, width 128, 64 px, 8 px patches, 64-d embedding) **in this world, on
clean truth renders of the procedural painter** (docs/method.md section 11),
so that its embedding means something there: two views of one identity are
pulled together and views of other identities pushed apart (a symmetric
InfoNCE loss over a batch of identities, each seen from two cameras of
yaw -120..120 deg). It is not CLIP and has never seen a real image; it knows
this world's avatars and nothing else. Renders are degraded at random (blur,
small shifts and scales, pixel noise; never recoloured, colour is identity
here) so that the generator's soft renders land near the truth they copy.

It is saved with ``save_pretrained`` (model + ``CLIPImageProcessor``), so the
project loads it by folder exactly as it loads a hub CLIP::

    avatar3d build-prior-pairs ... image_encoder=<out>

Beside it, ``world_encoder.json`` records how it was trained and what it
achieves on held-out identities: top-1 retrieval of the same identity among
``--test`` held-out ones, from the front view to the side (yaw 90) and back
(yaw 180) views (chance 1/test).

    python evaluation/image_to_avatar/world_encoder.py --out outputs/i2a/world_encoder
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from avatar3d.datagen.procedural import PAINTER_ID  # noqa: E402
from avatar3d.evaluation.truth import HELDOUT_SEED, _blur, heldout_identities, render_truth  # noqa: E402
from avatar3d.prior.encoder import ENCODER_CARD  # noqa: E402

# The world of jobs/configs/generate_procedural.yaml (one or two styles per shading family).
STYLES = ["pixar", "anime", "clay_figurine", "bronze_statue"]
TRAIN_SEED = HELDOUT_SEED + 0x4000   # identity streams no dataset, truth metric or test uses
TEST_SEED = HELDOUT_SEED + 0x4800
SIZE = 64
VIEWS = 4                           # renders per training identity; each step picks two of them
YAW_RANGE = 120.0
PITCH_RANGE = 15.0
BLUR_SIZES = (16, 24, 32, 48, 64)   # area-downsample to one of these and back (64 = sharp)
ENCODER_ARCH = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                    image_size=SIZE, patch_size=8, projection_dim=64)


def _render_chunk(args):
    idents, yaws, pitches = args
    return render_truth(idents, yaws, pitches, SIZE)[0]


def render_views(idents, yaws, pitches, workers: int = 2) -> np.ndarray:
    """Truth renders, split over ``workers`` processes (the painter is single-threaded numpy)."""
    chunks = np.array_split(np.arange(len(idents)), max(1, workers))
    jobs = [([idents[i] for i in c], yaws[c], pitches[c]) for c in chunks if len(c)]
    if workers <= 1:
        return np.concatenate([_render_chunk(j) for j in jobs])
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(_render_chunk, jobs)))


def build_encoder(seed: int):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**ENCODER_ARCH))
    processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    return model, processor


def to_pixels(images: np.ndarray, processor) -> torch.Tensor:
    """uint8 (N, 64, 64, 3) -> the processor's normalised (N, 3, 64, 64), without PIL (the same numbers:
    at 64 px the processor's resize and crop leave the image as it is; checked in ``main``)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur to one of BLUR_SIZES, shift / scale a little, add pixel noise (no colour change)."""
    n = len(x)
    sizes = torch.tensor(BLUR_SIZES)[torch.randint(0, len(BLUR_SIZES), (n,), generator=gen)]
    out = x.clone()
    for size in BLUR_SIZES[:-1]:
        pick = sizes == size
        if pick.any():
            out[pick] = _blur(x[pick], size)  # the view classifier's blur (area down, bilinear back)
    theta = torch.zeros(n, 2, 3)
    scale = 0.92 + 0.16 * torch.rand(n, generator=gen)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = 0.12 * (torch.rand(n, 2, generator=gen) - 0.5)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out + 0.15 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(out.shape, generator=gen)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.no_grad()
def embed(model, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(pixel_values=pixels[i:i + batch]).image_embeds for i in range(0, len(pixels), batch)])
    return F.normalize(out, dim=-1)


def retrieval(model, processor, test_views: dict[str, np.ndarray]) -> dict[str, float]:
    """Top-1: the front view's nearest neighbour among the other view of all test identities is its own."""
    front = embed(model, to_pixels(test_views["front"], processor))
    out = {}
    for name in ("side", "back"):
        other = embed(model, to_pixels(test_views[name], processor))
        out[f"front_to_{name}_top1"] = float(((front @ other.T).argmax(1) == torch.arange(len(front))).float().mean())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the encoder (save_pretrained layout)")
    p.add_argument("--identities", type=int, default=1024, help="training identities (each rendered VIEWS times)")
    p.add_argument("--test", type=int, default=128, help="held-out identities for the retrieval check")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64, help="identities per step (two views each)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--render-cache", default=None, help="folder to keep the truth renders in (reruns skip them)")
    args = p.parse_args(argv)
    if not 0 <= args.seed < TEST_SEED - TRAIN_SEED:
        p.error(f"--seed {args.seed}: pass 0..{TEST_SEED - TRAIN_SEED - 1} (larger seeds reach the test identities' stream)")
    t0 = time.perf_counter()

    # 1. Render the training identities from VIEWS random cameras each, and the test identities.
    # The cache key holds everything the renders depend on, so a changed setting never reuses old renders.
    key = hashlib.sha256(json.dumps([PAINTER_ID, STYLES, SIZE, VIEWS, YAW_RANGE, PITCH_RANGE, TRAIN_SEED, TEST_SEED,
                                     args.identities, args.test, args.seed]).encode()).hexdigest()[:16]
    cache = Path(args.render_cache) / f"renders-{key}.npz" if args.render_cache else None
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            train, test_views = f["train"], {k: f[k] for k in ("front", "side", "back")}
    else:
        rng = np.random.default_rng([args.seed, 0xE4C])
        idents = heldout_identities(STYLES, args.identities, seed=TRAIN_SEED + args.seed)
        rep = [i for i in idents for _ in range(VIEWS)]
        yaws = rng.uniform(-YAW_RANGE, YAW_RANGE, len(rep))
        pitches = rng.uniform(-PITCH_RANGE, PITCH_RANGE, len(rep))
        train = render_views(rep, yaws, pitches, args.workers).reshape(args.identities, VIEWS, SIZE, SIZE, 3)
        test_ids = heldout_identities(STYLES, args.test, seed=TEST_SEED + args.seed)
        test_views = {name: render_views(test_ids, np.full(args.test, yaw), np.zeros(args.test), args.workers)
                      for name, yaw in (("front", 0.0), ("side", 90.0), ("back", 180.0))}
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, train=train, **test_views)
    render_s = time.perf_counter() - t0
    print(f"rendered {train.shape[0]} x {VIEWS} training and {args.test} x 3 test views in {render_s:.0f} s", flush=True)

    # 2. The tower, and a check that to_pixels is what the processor itself gives.
    model, processor = build_encoder(args.seed)
    ref = processor(images=list(test_views["front"][:4]), return_tensors="pt")["pixel_values"]
    assert torch.allclose(ref, to_pixels(test_views["front"][:4], processor), atol=1e-5), "to_pixels != processor"
    before = retrieval(model, processor, test_views)
    pixels = to_pixels(train.reshape(-1, SIZE, SIZE, 3), processor).reshape(args.identities, VIEWS, 3, SIZE, SIZE)

    # 3. Contrastive training: two different views of each of `batch` identities.
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    losses = []
    model.train()
    for step in range(args.steps):
        who = torch.randperm(args.identities, generator=gen)[:args.batch]
        v1 = torch.randint(0, VIEWS, (args.batch,), generator=gen)
        v2 = (v1 + torch.randint(1, VIEWS, (args.batch,), generator=gen)) % VIEWS
        a = model(pixel_values=degrade(pixels[who, v1], gen)).image_embeds
        b = model(pixel_values=degrade(pixels[who, v2], gen)).image_embeds
        loss = info_nce(a, b, args.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {np.mean(losses[-100:]):.3f}  {time.perf_counter() - t0:.0f} s", flush=True)

    # 4. Measure on the held-out identities, save in the hub layout, write the card.
    after = retrieval(model, processor, test_views)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    card = {
        "what": "a CLIP-architecture vision tower trained in the procedural world (not CLIP; it has seen only "
                "truth renders of the procedural painter)",
        "objective": f"symmetric InfoNCE between two views of one identity (temperature {args.temperature}), "
                     f"yaw -{YAW_RANGE:.0f}..{YAW_RANGE:.0f} deg, pitch -{PITCH_RANGE:.0f}..{PITCH_RANGE:.0f} deg, "
                     f"degraded by blur {BLUR_SIZES} px, shift/scale and noise (no recolouring)",
        "architecture": ENCODER_ARCH, "styles": STYLES, "train_identities": args.identities, "views": VIEWS,
        "train_seed_stream": TRAIN_SEED + args.seed, "test_seed_stream": TEST_SEED + args.seed,
        "steps": args.steps, "batch_identities": args.batch, "lr": args.lr, "seed": args.seed,
        "loss_first_100": float(np.mean(losses[:100])), "loss_last_100": float(np.mean(losses[-100:])),
        "heldout_identities": args.test, "chance_top1": 1.0 / args.test,
        "retrieval_untrained": before, "retrieval": after,
        "render_s": round(render_s, 1), "total_s": round(time.perf_counter() - t0, 1),
        "command": "python evaluation/image_to_avatar/world_encoder.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (out / ENCODER_CARD).write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({"retrieval_untrained": before, "retrieval": after}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
