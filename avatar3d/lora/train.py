"""Character LoRA: fine-tune Stable Diffusion on ~10 images of one character (docs/method.md, character mode).

The paper's cartoon-character case: a LoRA on SD's UNet (optionally the
text encoder too) learns one character from a handful of pictures; the
dataset job then loads it into the ControlNet pipeline (``pipeline.lora``)
and paints that character from every view.

The recipe is diffusers' ``train_text_to_image_lora`` written as one plain
loop (ten images do not need a cluster, one GPU or even the CPU does):

1. check the folder (:mod:`avatar3d.lora.data`), load the base model;
2. encode every image once with the frozen VAE (the posterior's mean and std
   are kept; each step draws a fresh latent from them, as the recipe's
   per-step ``latent_dist.sample()`` does, without re-running the VAE);
3. caption = ``caption_template`` filled with ``style`` and ``token``
   ("a cartoon portrait of <mychar>"): the token is what prompts use to call
   the character;
4. peft LoRA adapters on the UNet's attention projections
   (``unet.add_adapter``); only they train (AdamW), everything else is frozen
   and, on a GPU, kept in fp16/bf16;
5. each step: noise, a uniform timestep, ``add_noise``, the UNet predicts the
   noise (or v, per the scheduler's ``prediction_type``), MSE (optionally
   min-SNR weighted);
6. the "denoising loss" on the given images over a fixed set of (noise, t)
   draws is measured before and after training, the evidence that it learned;
7. save in diffusers' LoRA format (``pytorch_lora_weights.safetensors``, rank
   and alpha in its metadata), plus ``avatar3d_lora.json`` and a
   ``styles.yaml`` whose one style carries the token, for
   ``avatar3d generate styles_file=<lora>/styles.yaml pipeline.lora=<lora>``;
8. MLflow at the edge: params, loss curve, before/after loss, preview grid,
   and the LoRA registered as a model (``models:/<name>/<version>``).

Every random draw (batches, noise, timesteps, latents, flips) comes from one
seeded generator, so a run is reproducible on a given device.
"""
from __future__ import annotations

import logging
import importlib.metadata
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from diffusers.utils import convert_state_dict_to_diffusers
from packaging.version import Version
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from avatar3d.config import ConfigError, dump_config, to_dict
from avatar3d.datagen.config import LORA_WEIGHTS
from avatar3d.datagen.pipeline import resolve_device
from avatar3d.gan.samples import image_grid
from avatar3d.lora.base import base_model_id, load_base_pipeline, sample_images
from avatar3d.lora.config import TEXT_ENCODER_TARGETS, UNET_TARGETS, LoraTrainConfig
from avatar3d.lora.data import load_image_set
from avatar3d.lora.registry import LORA_FORMAT, register_lora
from avatar3d.atomic import atomic_folder
from avatar3d.tracking.tracker import Tracker

log = logging.getLogger(__name__)

LORA_SUBDIR = "lora"
META_FILE = "avatar3d_lora.json"
STYLES_FILE = "styles.yaml"
SAMPLES_FILE = "samples.png"
@dataclass
class LoraResult:
    """What ``lora-train`` produced."""

    lora_dir: Path
    caption: str
    num_images: int
    steps: int
    probe_loss_before: float
    probe_loss_after: float
    final_loss: float
    train_s: float
    samples_path: Path | None
    mlflow_run_id: str | None
    registered_version: str | None

    @property
    def lora_uri(self) -> str:
        """What to pass as ``pipeline.lora``: the registry URI when registered, else the folder."""
        return f"models:/{self.registered_version}" if self.registered_version else str(self.lora_dir)

    def summary(self) -> str:
        drop = 100.0 * (1.0 - self.probe_loss_after / self.probe_loss_before) if self.probe_loss_before else 0.0
        lines = [
            f"LoRA trained on {self.num_images} images for {self.steps} steps in {self.train_s:.1f} s; caption {self.caption!r}",
            f"denoising loss on the images: {self.probe_loss_before:.4f} -> {self.probe_loss_after:.4f} ({drop:.1f}% lower)",
            f"LoRA: {self.lora_dir}",
        ]
        if self.samples_path:
            lines.append(f"previews: {self.samples_path}")
        if self.registered_version:
            lines.append(f"registered: models:/{self.registered_version}")
        lines.append(f"use it: avatar3d generate ... pipeline.lora={self.lora_uri} "
                     f"styles_file={self.lora_dir / STYLES_FILE}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- pieces


def resolve_precision(device: str, mixed_precision: str):
    """-> torch dtype of the frozen weights. LoRA weights always train in float32."""

    if mixed_precision == "auto":
        if device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mixed_precision != "no" and device != "cuda":
        raise ConfigError(f"mixed_precision={mixed_precision!r} needs a GPU, this run is on {device}: pass mixed_precision=no or auto")
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def check_text_encoder_lora_support() -> None:
    """Text-encoder adapters go through transformers' peft integration, which pins a minimum peft."""


    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:  # older transformers: no pin
        return
    have = importlib.metadata.version("peft")
    if Version(have) < Version(MIN_PEFT_VERSION):
        raise ConfigError(f"train_text_encoder=true needs peft>={MIN_PEFT_VERSION} with transformers "
                          f"{importlib.metadata.version('transformers')} (installed: peft {have}): "
                          "upgrade peft or pass train_text_encoder=false")


def _check_targets(model, targets, field_name: str) -> None:
    """peft's own error for a missing module is a page long: say it in one line first."""
    names = [n for n, _ in model.named_modules()]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise ConfigError(f"{field_name}: no module named {t!r} in the model: pass attention projections, "
                              f"e.g. {list(UNET_TARGETS if field_name == 'target_modules' else TEXT_ENCODER_TARGETS)}")


def add_lora(model, rank: int, alpha: int, targets, dropout: float = 0.0, field_name: str = "target_modules") -> list:
    """Attach a fresh peft LoRA adapter; returns its (float32) trainable parameters."""

    _check_targets(model, targets, field_name)
    model.requires_grad_(False)
    # init_lora_weights="gaussian": A ~ N(0, 1/r), B = 0, so the adapter starts as a no-op (the recipe's choice).
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                                 target_modules=list(targets)))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.to(torch.float32)
    return params


def encode_captions(tokenizer, text_encoder, captions: list[str], device):
    """CLIP hidden states of the captions, as SD conditions on them."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids, return_dict=False)[0]


def encode_latent_posteriors(vae, pixels, device, dtype, chunk: int = 4):
    """Frozen VAE posteriors of every image -> (mean, std) float32 tensors, scaled by the VAE's factor."""

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(pixels), chunk):
            x = torch.as_tensor(pixels[i: i + chunk], device=device, dtype=dtype)
            dist = vae.encode(x).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (torch.cat(means) - shift) * scale, torch.cat(stds) * scale


def _target(scheduler, latents, noise, timesteps):
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"scheduler prediction_type={kind!r} is not supported: use a model that predicts epsilon or v")


def denoising_loss(unet, scheduler, latents, encoder_hidden_states, noise, timesteps, snr_gamma: float = 0.0):
    """The DDPM training loss: noise the latents at ``timesteps``, predict eps (or v), MSE."""

    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states.to(unet.dtype), return_dict=False)[0].float()
    target = _target(scheduler, latents, noise, timesteps).float()
    if not snr_gamma:
        return F.mse_loss(pred, target)

    # Min-SNR weighting (Hang et al. 2023): easy, low-noise steps stop dominating the loss.
    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=list(range(1, pred.ndim)))
    return (per_sample * weight).mean()


def probe_loss(unet, scheduler, latents, encoder_hidden_states, seed: int, repeats: int) -> float:
    """Mean denoising loss on ``latents`` (the posterior means) over a fixed, seeded set of (noise, t).

    Same seed -> same draws, so before/after values compare the model only.
    """

    gen = torch.Generator("cpu").manual_seed(seed)
    n = latents.shape[0]
    total = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            noise = torch.randn(latents.shape, generator=gen).to(latents.device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen).to(latents.device)
            states = encoder_hidden_states.expand(n, -1, -1)
            total += float(denoising_loss(unet, scheduler, latents, states, noise, t))
    return total / repeats


def lora_state_dicts(unet, text_encoder=None):
    """peft adapters -> diffusers-format state dicts and their LoraConfig metadata (rank, alpha, targets)."""

    out = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
           # Without the metadata a loader assumes alpha == rank.
           "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict()}
    if text_encoder is not None:
        out["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
        out["text_encoder_lora_adapter_metadata"] = text_encoder.peft_config["default"].to_dict()
    return out


def save_lora(folder: Path, unet, text_encoder, meta: dict, caption: str, slug: str) -> Path:
    """Write the LoRA folder atomically: weights (diffusers format), metadata, a styles file with the token."""


    with atomic_folder(folder) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, weight_name=LORA_WEIGHTS, safe_serialization=True,
                                                  **lora_state_dicts(unet, text_encoder))
        (tmp / META_FILE).write_text(json.dumps({"format": LORA_FORMAT, **meta}, indent=2))
        # One style whose text calls the character, for `avatar3d generate styles_file=...`.
        (tmp / STYLES_FILE).write_text(yaml.safe_dump({"styles": [{"name": slug.replace("-", "_"), "text": caption}]},
                                                      sort_keys=False))
    return folder


# --------------------------------------------------------------------------- the run


def train_lora(cfg: LoraTrainConfig) -> LoraResult:
    """Train, save, log and register a character LoRA. Checks the folder before loading any model.

    The global torch RNG (LoRA init, dropout) is seeded with ``cfg.seed`` inside and restored after.
    """

    cfg.validate()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        return _train_lora(cfg)


def _train_lora(cfg: LoraTrainConfig) -> LoraResult:
    t0 = time.perf_counter()
    tracker = Tracker(cfg.tracking, Path(cfg.output_dir).expanduser(), f"lora-{cfg.slug}", stage="lora",
                      tags={"avatar3d.token": cfg.token}).check()
    images = load_image_set(cfg.images, cfg.resolution, cfg.min_images)
    if cfg.train_text_encoder:
        check_text_encoder_lora_support()
    device = resolve_device(cfg.device)
    dtype = resolve_precision(device, cfg.mixed_precision)
    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    log.info(f"{len(images)} images of {cfg.token!r} at {cfg.resolution}px, caption {cfg.caption!r}; "
             f"{cfg.preset} on {device} ({str(dtype).removeprefix('torch.')} frozen weights)")

    pipe = load_base_pipeline(cfg.preset, cfg.base_model)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(device)
        if dtype != torch.float32:  # diffusers warns on any dtype argument, even float32
            module.to(dtype=dtype)
    vae.eval()
    text_encoder.eval()

    pixels = images.pixels
    if cfg.random_flip:
        # Both orientations are encoded once; a flip is then a choice of latent.
        pixels = np.concatenate([pixels, pixels[..., ::-1]])
    lat_mean, lat_std = encode_latent_posteriors(vae, pixels, device, dtype)
    n_images = len(images)
    with torch.no_grad():
        caption_states = encode_captions(tokenizer, text_encoder, [cfg.caption], device).float()

    params = add_lora(unet, cfg.rank, cfg.alpha, cfg.target_modules, cfg.lora_dropout, "target_modules")
    if cfg.train_text_encoder:
        params += add_lora(text_encoder, cfg.rank, cfg.alpha, cfg.text_encoder_target_modules, cfg.lora_dropout,
                           "text_encoder_target_modules")
    n_params = sum(p.numel() for p in params)

    probe_latents = lat_mean[:n_images]
    unet.eval()
    loss_before = probe_loss(unet, noise_scheduler, probe_latents, caption_states, cfg.seed + 1, cfg.probe_repeats)
    log.info(f"{n_params:,} LoRA parameters; denoising loss before: {loss_before:.4f}")

    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.lr_warmup_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)
    gen = torch.Generator("cpu").manual_seed(cfg.seed)
    if cfg.train_text_encoder:
        token_ids = tokenizer([cfg.caption], padding="max_length", max_length=tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(device)

    losses: list[tuple[int, float]] = []
    running, t_loop = None, time.perf_counter()
    unet.train()
    if cfg.train_text_encoder:
        text_encoder.train()
    with tracker:
        tracker.log_config(to_dict(cfg))
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(0, n_images, (cfg.batch_size,), generator=gen)
            if cfg.random_flip:
                idx = idx + n_images * torch.randint(0, 2, (cfg.batch_size,), generator=gen)
            eps = torch.randn((cfg.batch_size, *lat_mean.shape[1:]), generator=gen).to(device)
            latents = lat_mean[idx.to(device)] + lat_std[idx.to(device)] * eps
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen).to(device)
            with autocast:
                if cfg.train_text_encoder:
                    states = text_encoder(token_ids, return_dict=False)[0].expand(cfg.batch_size, -1, -1)
                else:
                    states = caption_states.expand(cfg.batch_size, -1, -1)
                loss = denoising_loss(unet, noise_scheduler, latents, states, noise, t, cfg.snr_gamma)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}: lower learning_rate "
                                         f"(now {cfg.learning_rate}) or use mixed_precision=bf16/no")
            scaler.scale(loss).backward()
            if cfg.max_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)

            value = float(loss.detach())
            running = value if running is None else 0.9 * running + 0.1 * value
            if step % cfg.log_every == 0 or step == cfg.steps:
                per_step = (time.perf_counter() - t_loop) / step
                log.info(f"step {step}/{cfg.steps} loss {running:.4f} | {per_step:.3f} s/step | "
                         f"ETA {per_step * (cfg.steps - step):.0f} s")
                losses.append((step, running))
                tracker.log_metrics({"loss": running, "lr": lr_schedule.get_last_lr()[0]}, step)
        train_s = time.perf_counter() - t_loop

        unet.eval()
        text_encoder.eval()
        if cfg.train_text_encoder:
            with torch.no_grad():
                caption_states = encode_captions(tokenizer, text_encoder, [cfg.caption], device).float()
        loss_after = probe_loss(unet, noise_scheduler, probe_latents, caption_states, cfg.seed + 1, cfg.probe_repeats)
        log.info(f"denoising loss after: {loss_after:.4f} (before {loss_before:.4f})")

        meta = {
            "token": cfg.token, "style": cfg.style, "caption": cfg.caption, "preset": cfg.preset,
            "base_model": base_model_id(cfg.preset, cfg.base_model), "base_model_source": cfg.base_model,
            "rank": cfg.rank, "alpha": cfg.alpha, "target_modules": list(cfg.target_modules),
            "train_text_encoder": cfg.train_text_encoder, "resolution": cfg.resolution, "steps": cfg.steps,
            "images": [p.name for p in images.paths], "probe_loss_before": loss_before, "probe_loss_after": loss_after,
        }
        lora_dir = save_lora(out / LORA_SUBDIR, unet, text_encoder if cfg.train_text_encoder else None,
                             meta, cfg.caption, cfg.slug)
        samples_path = None
        if cfg.num_samples:
            samples_path = _write_previews(pipe, cfg, images, out / SAMPLES_FILE)
        tracker.log_metrics({"probe_loss_before": loss_before, "probe_loss_after": loss_after, "train_s": train_s,
                         "lora_parameters": n_params, "num_images": n_images})
        tracker.log_file(lora_dir / META_FILE)
        if samples_path is not None:
            tracker.log_file(samples_path)
        registered = tracker.register(register_lora, lora_dir, default=cfg.default_register_name)

    result = LoraResult(
        lora_dir=lora_dir, caption=cfg.caption, num_images=n_images, steps=cfg.steps,
        probe_loss_before=loss_before, probe_loss_after=loss_after, final_loss=losses[-1][1], train_s=train_s,
        samples_path=samples_path, mlflow_run_id=tracker.run_id, registered_version=registered,
    )
    log.info(f"done in {time.perf_counter() - t0:.1f} s")
    return result


def _write_previews(pipe, cfg: LoraTrainConfig, images, path: Path) -> Path:
    """Grid: training images / with the LoRA / the base model alone, same seeds (the LoRA's effect at a glance)."""

    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))
    prompts = [cfg.caption] * cfg.num_samples
    kwargs = dict(steps=cfg.sample_steps, size=cfg.resolution)

    with torch.autocast(device_type=pipe.device.type, dtype=pipe.unet.dtype, enabled=pipe.unet.dtype != torch.float32):
        with_lora = sample_images(pipe, prompts, seeds, **kwargs)
        pipe.unet.disable_adapters()
        if cfg.train_text_encoder:
            pipe.text_encoder.disable_adapters()
        try:
            base = sample_images(pipe, prompts, seeds, **kwargs)
        finally:
            pipe.unet.enable_adapters()
            if cfg.train_text_encoder:
                pipe.text_encoder.enable_adapters()
    shown = [((im.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
             for im in images.pixels[: cfg.num_samples]]
    shown += [np.full_like(with_lora[0], 255)] * (len(with_lora) - len(shown))  # fewer images than samples: blanks
    image_grid(np.stack([*shown, *with_lora, *base]), 3, len(with_lora)).save(path)
    return path
