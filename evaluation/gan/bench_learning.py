"""Learning evidence for the tri-plane GAN: train the ``tiny`` preset on CPU for a bounded time.

Data: multi-view renders of the canonical head (``avatar3d.scene.head``), one
random albedo colour per image, Lambertian shading with a light at the
camera, black background; cameras uniform over yaw [-180, 180] and elevation
[-30, 30] (known labels, as the real pipeline stores them).

Metrics, at initialisation and after training (EMA generator, fixed z):
  * FD-pix:  Frechet distance between generated and real images, on 8x8
             area-downsampled pixels (192-d);
  * FD-rand: Frechet distance on the features of a fixed, seeded random
             conv net (an Inception-free stand-in for FID: no weights can be
             downloaded here). Both are also given for two disjoint real sets,
             the floor a perfect generator would reach;
  * IoU:     silhouettes (accumulated opacity > 0.5 at the neural resolution)
             rendered from held-out cameras vs the head's true silhouettes.

    OMP_NUM_THREADS=1 python evaluation/gan/bench_learning.py --minutes 12   # CPU minutes

Writes ``results/learning.json`` and ``results/learning_grid.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from avatar3d import native
from avatar3d.gan import GANConfig, GANTrainer
from avatar3d.scene.cameras import CameraSampler, camera_label
from avatar3d.scene.head import canonical_head
from avatar3d.scene.render import render_mesh

RESULTS = Path(__file__).parent / "results"


def render_dataset(head, n: int, size: int, seed: int):
    """-> images (n, 3, size, size) in [-1, 1], labels (n, 25), masks (n, size, size) bool."""
    rng = np.random.default_rng(seed)
    yaw, pitch, labels = CameraSampler().sample(rng, n)
    albedo = rng.uniform(0.25, 1.0, size=(n, 3))
    imgs, masks = [], []
    for i in range(n):
        r = render_mesh(head, labels[i], size)
        shade = 0.35 + 0.65 * np.clip(-r.normal[..., 2], 0.0, 1.0)  # light at the camera (camera z forward)
        rgb = np.where(r.mask[..., None], albedo[i] * shade[..., None], 0.0)
        imgs.append(rgb.transpose(2, 0, 1) * 2 - 1)
        masks.append(r.mask)
    return (torch.tensor(np.stack(imgs), dtype=torch.float32), torch.tensor(labels, dtype=torch.float32),
            np.stack(masks), yaw)


class RandomFeatures(torch.nn.Module):
    """Fixed random conv net (seeded): 64px image -> 256-d feature."""

    def __init__(self, seed: int = 1234):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 32, 64, 128, 256]
        self.weights = [torch.randn(o, i, 3, 3, generator=g) / (3 * i ** 0.5) for i, o in zip(chans[:-1], chans[1:])]

    @torch.no_grad()
    def forward(self, x):
        for w in self.weights:
            x = F.leaky_relu(F.conv2d(x, w, padding=1, stride=2), 0.2)
        return x.mean([2, 3])


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(c1 @ c2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean.real))


def pix_features(x: torch.Tensor) -> np.ndarray:
    return F.adaptive_avg_pool2d(x, 8).flatten(1).numpy().astype(np.float64)


@torch.no_grad()
def generate(G, z, c, batch: int = 16):
    out_img, out_mask = [], []
    for i in range(0, len(z), batch):
        o = G(z[i:i + batch], c[i:i + batch], noise_mode="const")
        out_img.append(o.image.clamp(-1, 1))
        out_mask.append(o.image_mask[:, 0])
    return torch.cat(out_img), torch.cat(out_mask)


def evaluate(G, real_eval, real_ref, label_pool, holdout_c, holdout_masks, rf, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = len(real_eval)
    z = torch.randn(n, G.z_dim, generator=g)
    c = label_pool[torch.randint(len(label_pool), (n,), generator=g)]
    fake, _ = generate(G, z, c)
    metrics = {
        "fd_pix": frechet(pix_features(fake), pix_features(real_eval)),
        "fd_rand": frechet(rf(fake).numpy().astype(np.float64), rf(real_eval).numpy().astype(np.float64)),
    }
    # Silhouettes from held-out cameras, 4 latents each.
    nz = 4
    zz = torch.randn(nz, G.z_dim, generator=g).repeat_interleave(len(holdout_c), 0)
    cc = holdout_c.repeat(nz, 1)
    _, mask = generate(G, zz, cc)
    pred = (mask > 0.5).numpy()
    true = np.tile(holdout_masks, (nz, 1, 1))
    inter = (pred & true).sum((1, 2))
    union = (pred | true).sum((1, 2))
    metrics["silhouette_iou"] = float((inter / np.maximum(union, 1)).mean())
    return metrics, fake


def save_grid(path: Path, rows, size: int = 64):
    from PIL import Image
    rows = [r.clamp(-1, 1) for r in rows]
    ncol = max(len(r) for r in rows)
    grid = np.zeros((len(rows) * size, ncol * size, 3), dtype=np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            im = F.interpolate(im[None], size=size, mode="nearest")[0] if im.shape[-1] != size else im
            if im.shape[0] == 1:
                im = im.repeat(3, 1, 1)
            grid[i * size:(i + 1) * size, j * size:(j + 1) * size] = (
                ((im.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8))
    Image.fromarray(grid).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=12.0,
                    help="training budget in CPU minutes of this process (one thread): the machine is shared, "
                         "so CPU time, not wall time, is what makes runs comparable")
    ap.add_argument("--max-wall-minutes", type=float, default=40.0, help="safety cap on wall-clock training time")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--train-views", type=int, default=1024)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    ops_on = native.enable_training_ops("cpu")  # as GAN training on CPU runs
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Fast blur fade and EMA for a run of a few thousand images (EG3D's are for millions).
    cfg = GANConfig.tiny(blur_fade_kimg=1.0, gpc_fade_kimg=1.0, ema_kimg=0.2)
    t0 = time.time()
    head = canonical_head()
    train_img, train_c, _, _ = render_dataset(head, args.train_views, cfg.output_resolution, args.seed + 1)
    eval_img, _, _, _ = render_dataset(head, args.eval_images, cfg.output_resolution, args.seed + 2)
    ref_img, _, _, _ = render_dataset(head, args.eval_images, cfg.output_resolution, args.seed + 3)
    hold_yaw = np.linspace(-180, 135, 8) + 17.0  # not on the training grid (training yaws are random anyway)
    hold_c = torch.tensor(camera_label(hold_yaw, np.full(8, 12.0)), dtype=torch.float32)
    hold_masks = np.stack([render_mesh(head, hold_c[i].double().numpy(), cfg.neural_rendering_resolution).mask
                           for i in range(len(hold_c))])
    print(f"data rendered in {time.time() - t0:.1f}s")

    rf = RandomFeatures()
    floor = {"fd_pix": frechet(pix_features(ref_img), pix_features(eval_img)),
             "fd_rand": frechet(rf(ref_img).numpy().astype(np.float64), rf(eval_img).numpy().astype(np.float64))}

    tr = GANTrainer(cfg, generator=torch.Generator().manual_seed(args.seed))
    init_metrics, init_fake = evaluate(tr.G_ema, eval_img, ref_img, train_c, hold_c, hold_masks, rf)
    print("init", json.dumps(init_metrics))

    g = torch.Generator().manual_seed(args.seed)
    t_start = time.time()
    cpu_start = time.process_time()
    log = []
    steps = 0
    while (time.process_time() - cpu_start < args.minutes * 60
           and time.time() - t_start < args.max_wall_minutes * 60):
        idx = torch.randint(len(train_img), (args.batch,), generator=g)
        img, c = train_img[idx], train_c[idx]
        flip = torch.rand(args.batch, generator=g) < 0.5  # x-flip augmentation with mirrored labels
        if flip.any():
            from avatar3d.scene.cameras import flip_label
            img = torch.where(flip[:, None, None, None], img.flip(-1), img)
            c = torch.where(flip[:, None], torch.tensor(flip_label(c.double().numpy()), dtype=torch.float32), c)
        stats = tr.step(img, c)
        steps += 1
        if steps % 25 == 0:
            entry = {"step": steps, "kimg": tr.cur_nimg / 1e3, "sec": round(time.time() - t_start, 1),
                     "cpu_sec": round(time.process_time() - cpu_start, 1),
                     **{k: round(float(v), 4) for k, v in stats.items()}}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    train_s = time.time() - t_start
    train_cpu_s = time.process_time() - cpu_start

    final_metrics, final_fake = evaluate(tr.G_ema, eval_img, ref_img, train_c, hold_c, hold_masks, rf)
    print("final", json.dumps(final_metrics))

    # Grid: real samples; init samples; per latent, a turn around the head (image, silhouette vs truth).
    with torch.no_grad():
        zz = torch.randn(3, cfg.z_dim, generator=torch.Generator().manual_seed(7))
        rows = [train_img[:8], init_fake[:8], final_fake[:8]]
        for k in range(3):
            o = tr.G_ema(zz[k:k + 1].repeat(len(hold_c), 1), hold_c, noise_mode="const")
            rows.append(o.image)
            rows.append(o.image_mask * 2 - 1)
        rows.append(torch.tensor(hold_masks[:, None], dtype=torch.float32) * 2 - 1)
    save_grid(out / "learning_grid.png", rows)

    result = {
        "command": f"python evaluation/gan/bench_learning.py --minutes {args.minutes} --batch {args.batch}",
        "data": "canonical head (avatar3d.scene.head), random albedo per image, "
                f"{args.train_views} training views at {cfg.output_resolution}px",
        "config": cfg.to_dict(), "batch": args.batch, "steps": steps, "kimg": tr.cur_nimg / 1e3,
        "train_wall_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu_s, 1),
        "threads": torch.get_num_threads(),
        "compiled_training_ops": ops_on,
        "allocator_env": {k: os.environ.get(k) for k in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_CONF")},
        "init": init_metrics, "final": final_metrics, "real_vs_real_floor": floor,
        # IoU a constant "everything is foreground" silhouette would get: the bar to beat.
        "silhouette_iou_all_foreground": float(hold_masks.mean((1, 2)).mean()),
        "fd_pix_ratio_init_over_final": init_metrics["fd_pix"] / final_metrics["fd_pix"],
        "fd_rand_ratio_init_over_final": init_metrics["fd_rand"] / final_metrics["fd_rand"],
        "log": log,
    }
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "log")}, indent=1))


if __name__ == "__main__":
    main()
