"""FLOPs of the real-size networks, counted with ``torch.utils.flop_counter.FlopCounterMode``.

* ``sd``: one denoising step of SD 1.5 + 2 ControlNets (OpenPose + depth) at 512 px
  with classifier-free guidance (a batch of 2 = uncond + cond per image), the CLIP
  text encoder (2 prompts per image) and one VAE decode. Built on the meta device:
  no memory, no weights, seconds.
* ``gan``: the paper GAN (``GANConfig.paper()``, d_mode and r1_gamma as
  ``jobs/configs/train_gan_paper.yaml``): the four phases of one training step
  (Gmain, Greg, Dmain, Dreg) through :class:`avatar3d.gan.step.GANTrainer`'s own
  losses, at neural rendering resolution 64 (start) and/or 128 (after the fade),
  on the meta device (default) or timed on the CPU (``--device cpu``).
* ``prior``: the paper prior's training step (FLOPs at batch 1024, 3 timed CPU steps at 64).
* ``gan-activations``: on the meta device, the bytes the autograd graph saves for
  backward per image in Gmain's forward (G + D) at 64 and 128 (fp32).

FLOPs as ``FlopCounterMode`` counts them: 2 x multiply-accumulates of matmuls,
convolutions and attention (elementwise ops, grid_sample and the like are not
counted), forward and backward.

    python evaluation/realsize/count_flops.py sd --out /tmp/realsize/flops_sd.json
    python evaluation/realsize/count_flops.py gan --batch 2 --res 64 128 --out /tmp/realsize/flops_gan.json
    python evaluation/realsize/count_flops.py gan-activations --res 64 128
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class _NoModules:
    """Stands in for FlopCounterMode's module tracker: totals only. The tracker's backward hooks break
    ``autograd.grad(create_graph=True)`` (R1's gradient penalty), so the counter runs without them."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _counter():
    from torch.utils.flop_counter import FlopCounterMode
    mode = FlopCounterMode(display=False)
    mode.mod_tracker = _NoModules()
    return mode


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --------------------------------------------------------------------------- SD 1.5 + ControlNets


def count_sd(resolution: int = 512, tiny: bool = False) -> dict:
    import torch
    from diffusers.models.attention_processor import AttnProcessor

    import sd15_configs as sd

    lat = resolution // 8
    dev = "meta"
    with torch.device(dev):
        if tiny:
            from avatar3d.datagen.pipeline import build_tiny_components
            parts = build_tiny_components("hybrid")
            unet, nets, vae, text = parts["unet"], list(parts["controlnet"]), parts["vae"], parts["text_encoder"]
            lat = resolution // 2
        else:
            unet, vae, text = sd.build("unet"), sd.build("vae"), sd.build("text_encoder")
            nets = [sd.build("controlnet"), sd.build("controlnet")]
    # The classic attention processor: plain bmm + softmax, which the counter counts on any device.
    for m in [unet, *nets, vae]:
        m.set_attn_processor(AttnProcessor())
    hid = unet.config.cross_attention_dim
    out = {"resolution": resolution, "latent": lat, "cfg_batch": 2}
    with torch.no_grad(), torch.device(dev):
        x = torch.randn(2, 4, lat, lat)
        t = torch.tensor([500, 500])
        ehs = torch.randn(2, 77, hid)
        cond = torch.randn(2, 3, resolution, resolution)
        c = _counter()
        with c:
            downs, mid = None, None
            for net in nets:
                d, m = net(x, t, encoder_hidden_states=ehs, controlnet_cond=cond, return_dict=False)
                downs = d if downs is None else [a + b for a, b in zip(downs, d)]
                mid = m if mid is None else mid + m
        out["controlnets_2_per_step_cfg"] = c.get_total_flops()
        c = _counter()
        with c:
            unet(x, t, encoder_hidden_states=ehs, down_block_additional_residuals=downs,
                 mid_block_additional_residual=mid)
        out["unet_per_step_cfg"] = c.get_total_flops()
        c = _counter()
        with c:
            text(torch.zeros(2, 77, dtype=torch.long))
        out["text_encoder_per_image_cfg"] = c.get_total_flops()
        c = _counter()
        with c:
            vae.decode(torch.randn(1, 4, lat, lat))
        out["vae_decode_per_image"] = c.get_total_flops()
    out["step_per_image"] = out["controlnets_2_per_step_cfg"] + out["unet_per_step_cfg"]

    def per_image(steps):
        return steps * out["step_per_image"] + out["text_encoder_per_image_cfg"] + out["vae_decode_per_image"]

    out["per_image_20_steps"] = per_image(20)
    out["per_image_50_steps_no_controlnet"] = (
        50 * out["unet_per_step_cfg"] + out["text_encoder_per_image_cfg"] + out["vae_decode_per_image"])
    return out


# --------------------------------------------------------------------------- paper GAN


def gan_config(tiny: bool = False):
    from avatar3d.gan.config import GANConfig
    # d_mode / r1_gamma as jobs/configs/train_gan_paper.yaml sets them.
    return (GANConfig.tiny if tiny else GANConfig.paper)(d_mode="coarse_to_fine", r1_gamma=1.0)


def real_batch(cfg, n, seed=0):
    """n random images in [-1, 1] with plausible EG3D camera labels (orbit at r=2.7, looking at the origin)."""
    import math

    import torch
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, cfg.output_resolution, cfg.output_resolution, generator=g) * 2 - 1
    labels = []
    for i in range(n):
        yaw = (torch.rand(1, generator=g).item() * 2 - 1) * math.pi
        pitch = (torch.rand(1, generator=g).item() - 0.5) * 0.5
        cam = torch.tensor([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]) * 2.7
        fwd = -cam / cam.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), fwd)
        right = right / right.norm()
        up = torch.linalg.cross(fwd, right)
        m = torch.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, -up, fwd, cam
        k = torch.tensor([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0])
        labels.append(torch.cat([m.flatten(), k]))
    return img, torch.stack(labels)


class _MetaEngine:
    """What GANTrainer needs of an engine, for the meta device: backward only (no optimiser state to allocate;
    Adam's update is elementwise, which the counter does not count anyway)."""

    def __init__(self, module, spec):
        self.module, self.optimizer = module, None

    def backward(self, loss):
        loss.backward()

    def step(self):
        pass


def count_gan_step(batch: int = 2, res: int = 64, tiny: bool = False, device: str = "meta",
                   snapshot: str | None = None, precision: str = "fp32") -> dict:
    """FLOPs of each phase of one GANTrainer step (Gmain, Greg, Dmain, Dreg) at ``batch`` and neural ``res``.

    ``device="meta"``: nothing is allocated or computed (seconds); the augmentation blur is switched off
    there (autocast has no meta dtype; the blur is a small separable conv). ``device="cpu"``: the real step,
    timed per phase."""
    import torch

    from avatar3d.gan.step import GANTrainer
    from avatar3d.training.loop import autocast_for

    cfg = gan_config(tiny)
    meta = device == "meta"
    if meta:
        cfg = cfg.replace(blur_fade_kimg=0)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if meta:
        item = torch.Tensor.item
        torch.Tensor.item = lambda self: 0.0 if self.is_meta else item(self)  # the loss logs scalars
    try:
        with torch.device(device) if meta else _nullcontext():
            tr = GANTrainer(cfg, use_ema=not meta, device=device, engine_factory=_MetaEngine if meta else None)
        build_s = time.perf_counter() - t0
        if res != cfg.neural_rendering_resolution:
            # After the fade: the schedules read cur_nimg (neural resolution = final, blur off).
            tr.cur_nimg = int(cfg.neural_rendering_resolution_fade_kimg * 1e3)
        real_img, real_c = real_batch(cfg, batch)
        real_img, real_c = real_img.to(device), real_c.to(device)
        gen_c = real_c.flip(0)
        phases = {}
        for name, gain in (("Gmain", 1.0), ("Greg", float(cfg.density_reg_interval)),
                           ("Dmain", 1.0), ("Dreg", float(cfg.r1_interval))):
            engine = tr.G_engine if name.startswith("G") else tr.D_engine
            z = torch.randn(batch, cfg.z_dim, device=device)
            c = _counter()
            t = time.perf_counter()
            # precision=bf16: the training loop's own autocast (none on meta: autocast has no meta dtype).
            autocast = _nullcontext() if meta else autocast_for(precision, device)
            with c, autocast:
                stats = tr._phase(name, engine, real_img, real_c, z, gen_c, gain)
            phases[name] = {"flops": c.get_total_flops()}
            if not meta:
                phases[name]["wall_s"] = round(time.perf_counter() - t, 2)
                # the losses themselves: a dtype path that runs but yields NaN / inf is a broken path
                phases[name]["losses"] = {k: float(v) for k, v in stats.items()}
                bad = {k: v for k, v in phases[name]["losses"].items() if not math.isfinite(v)}
                if bad:
                    raise FloatingPointError(f"{name} at {precision}: non-finite {bad}")
        tr.G.requires_grad_(True)
        tr.D.requires_grad_(True)
        if snapshot and not meta:
            from avatar3d.gan.ema import update_ema
            from avatar3d.gan.snapshot import load_snapshot, save_snapshot
            t = time.perf_counter()
            update_ema(tr.G_ema, tr.G, 0.999)
            save_snapshot(snapshot, tr.G_ema, cfg.to_dict(), {"kimg": 0, "note": "realsize CPU run"})
            loaded = load_snapshot(snapshot)
            phases["snapshot"] = {"flops": 0, "wall_s": round(time.perf_counter() - t, 2),
                                  "bytes": os.path.getsize(snapshot),
                                  "params": sum(p.numel() for p in loaded.generator.parameters())}
    finally:
        if meta:
            torch.Tensor.item = item
    amortised = (phases["Gmain"]["flops"] + phases["Dmain"]["flops"]
                 + phases["Greg"]["flops"] / cfg.density_reg_interval + phases["Dreg"]["flops"] / cfg.r1_interval)
    out = {
        "device": device, "precision": precision, "batch": batch, "neural_resolution": cfg.neural_resolution_at(tr.cur_nimg),
        "output_resolution": cfg.output_resolution, "phases": phases,
        "flops_step_all_phases": sum(p["flops"] for k, p in phases.items() if k != "snapshot"),
        "flops_step_amortised": amortised,
        "flops_per_image_amortised": amortised / batch,
    }
    if not meta:
        out.update(build_s=round(build_s, 2), wall_step_all_phases_s=round(sum(p["wall_s"] for k, p in phases.items() if k != "snapshot"), 2),
                   threads=torch.get_num_threads(), peak_rss_gb=round(peak_rss_gb(), 2))
    return out


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


def gan_saved_activations(res: int, tiny: bool = False) -> dict:
    """Bytes autograd saves for backward in Gmain's forward (G + D), per image, on the meta device."""
    import torch

    from avatar3d.gan.generator import TriPlaneGenerator
    from avatar3d.gan.step import build_discriminator

    cfg = gan_config(tiny)
    with torch.device("meta"):
        G, D = TriPlaneGenerator(cfg), build_discriminator(cfg)
        D.requires_grad_(False)
        total = {"bytes": 0}
        seen = set()

        def pack(t):
            key = (t.data_ptr() if t.device.type != "meta" else id(t), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                total["bytes"] += t.numel() * t.element_size()
            return t

        n = 1
        z, c = torch.randn(n, cfg.z_dim), torch.randn(n, cfg.c_dim)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = G(z, c, neural_rendering_resolution=res)
            D(out.image, out.image_raw, torch.zeros(n, cfg.d_label_dim))
    return {"neural_resolution": res, "saved_bytes_per_image": total["bytes"],
            "saved_gib_per_image": round(total["bytes"] / 2**30, 3)}


def prior_steps(batch: int = 1024, steps: int = 3, cpu_batch: int = 64) -> dict:
    """The paper prior (w 512, CLIP-L 768, 12 x 64 heads, 10 layers): FLOPs of one training step at the
    config's global batch (counted, CPU tensors: the model is small), then ``steps`` AdamW steps timed on
    the CPU at ``cpu_batch`` on random (w, embedding) pairs: the loss and the optimiser step the job runs."""
    import torch

    from avatar3d.prior.model import PriorSize, build_prior, diffusion_loss, train_scheduler

    torch.manual_seed(0)
    prior = build_prior(512, 768, PriorSize.preset("paper"))
    sched = train_scheduler("sample")
    opt = torch.optim.AdamW([p for p in prior.parameters() if p.requires_grad], lr=3e-4)
    g = torch.Generator().manual_seed(0)

    def step(n, count=False):
        w = torch.randn(n, 512)
        emb = torch.nn.functional.normalize(torch.randn(n, 768), dim=-1)
        c = _counter()
        with c if count else _nullcontext():
            loss = diffusion_loss(prior, sched, w, emb, 0.1, generator=g)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss), (c.get_total_flops() if count else None)

    _, flops = step(batch, count=True)
    t = time.perf_counter()
    losses = [step(cpu_batch)[0] for _ in range(steps)]
    wall = (time.perf_counter() - t) / steps
    return {"params": sum(p.numel() for p in prior.parameters()), "batch_counted": batch,
            "flops_per_step": flops, "flops_per_sample": flops / batch, "cpu_batch": cpu_batch,
            "cpu_s_per_step": round(wall, 3), "losses": [round(x, 4) for x in losses],
            "peak_rss_gb": round(peak_rss_gb(), 2)}


def image_to_avatar(folder: str, tiny: bool = False, steps: int | None = None) -> dict:
    """The paper image-to-avatar pipeline, random weights, through the real loader: CLIP ViT-L/14 vision tower,
    the paper prior (w 512, 768-d condition), the paper GAN's generator, saved as a prior folder
    (``ImageToAvatarPipeline.save_pretrained``) and loaded back with ``from_pretrained``; then one 512 px input
    -> sampled w (the paper config's DDIM steps and CFG) -> 3 views, timed and counted. The folder is what
    ``avatar3d image-to-avatar IMAGE --prior <folder>`` takes (the CLI run is measured separately)."""
    import numpy as np
    import sd15_configs as sd
    import torch

    from avatar3d.config import load_config, to_dict
    from avatar3d.gan.generator import TriPlaneGenerator
    from avatar3d.gan.snapshot import save_snapshot
    from avatar3d.prior.config import TrainPriorConfig
    from avatar3d.prior.encoder import ImageEncoder, tiny_encoder
    from avatar3d.prior.model import PriorSize, build_prior, train_scheduler
    from avatar3d.prior.pipeline import ImageToAvatarPipeline

    root = Path(__file__).resolve().parents[2]
    pcfg = load_config(TrainPriorConfig, root / "jobs" / "configs" / "prior_train_paper.yaml", ["pairs=unused"])
    sampling = {**to_dict(pcfg.sampling), **({"num_inference_steps": steps} if steps else {})}  # as train-prior stores it
    gcfg = gan_config(tiny)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t = time.perf_counter()
    G = TriPlaneGenerator(gcfg).eval()
    snapshot = save_snapshot(folder.parent / f"{folder.name}-generator.safetensors", G, gcfg.to_dict(),
                             {"kimg": 0, "note": "realsize: random weights"})
    if tiny:
        encoder = tiny_encoder()
    else:
        from transformers import CLIPImageProcessor
        encoder = ImageEncoder(model=sd.build("image_encoder").eval().requires_grad_(False),
                               processor=CLIPImageProcessor(**{k: v for k, v in sd.FEATURE_EXTRACTOR.items()
                                                               if k != "image_processor_type"}),
                               name="random CLIP ViT-L/14 vision tower")
    prior = build_prior(G.w_dim, encoder.dim, PriorSize.preset("tiny" if tiny else pcfg.model.size))
    pipe = ImageToAvatarPipeline(encoder, prior, train_scheduler(pcfg.model.prediction_type), G, defaults=sampling)
    pipe.save_pretrained(folder, snapshot)
    build_s = time.perf_counter() - t
    del pipe, G, encoder, prior
    t = time.perf_counter()
    pipe = ImageToAvatarPipeline.from_pretrained(folder)
    load_s = time.perf_counter() - t
    image = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    c = _counter()
    t = time.perf_counter()
    with c:
        out = pipe(image, seed=0, yaws=[0.0, 90.0, 180.0])
    call_s = time.perf_counter() - t
    if not torch.isfinite(out.w).all():
        raise FloatingPointError("image-to-avatar: non-finite w")
    return {"folder": str(folder), "sampling": sampling, "params": {
                "image_encoder": sd.num_params(pipe.image_encoder.model), "prior": sd.num_params(pipe.prior),
                "generator": sd.num_params(pipe.generator)},
            "build_and_save_s": round(build_s, 1), "from_pretrained_s": round(load_s, 1),
            "call_s": round(call_s, 1), "flops_call": c.get_total_flops(), "views": list(out.views.shape),
            "w_norm": round(float(out.w.norm()), 3), "peak_rss_gb": round(peak_rss_gb(), 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["sd", "gan", "gan-activations", "prior", "i2a"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--res", type=int, nargs="+", default=[64])
    p.add_argument("--tiny", action="store_true", help="the tiny presets (tests)")
    p.add_argument("--device", default="meta", choices=["meta", "cpu"], help="gan: count on meta (no memory) "
                   "or run the real step on the CPU (timed)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="gan --device cpu: bf16 autocast")
    p.add_argument("--snapshot", default=None, help="gan --device cpu: write (and read back) the EMA snapshot here")
    p.add_argument("--folder", default=None, help="i2a: where to write the prior folder (+ <folder>-generator.safetensors)")
    p.add_argument("--steps", type=int, default=None, help="i2a: sampling steps (default: the paper config's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t = time.perf_counter()
    if args.what == "sd":
        result = count_sd(tiny=args.tiny, resolution=64 if args.tiny else 512)
    elif args.what == "gan":
        result = {"steps": [count_gan_step(args.batch, r, args.tiny, args.device, args.snapshot, args.precision) for r in args.res]}
    elif args.what == "i2a":
        if not args.folder:
            p.error("i2a needs --folder (where to write the pipeline folder)")
        result = image_to_avatar(args.folder, args.tiny, args.steps)
    elif args.what == "prior":
        result = prior_steps(batch=1024, steps=3, cpu_batch=args.batch if args.batch != 2 else 64)
    else:
        result = {"activations": [gan_saved_activations(r, args.tiny) for r in args.res]}
    result.update(what=args.what, wall_s=round(time.perf_counter() - t, 2), peak_rss_gb=round(peak_rss_gb(), 2),
                  torch_threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
