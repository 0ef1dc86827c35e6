"""Image -> 3D avatar: CLIP embedding -> prior-sampled w -> generator renders (docs/method.md section 6).

A trained prior is one self-contained folder (diffusers' habit of one folder
per component)::

    <prior folder>/
      avatar3d_prior.json      format, dims, sampling defaults, what it was trained on
      prior/                   PriorTransformer (save_pretrained; holds the w mean/std)
      scheduler/               the DDPM training schedule (sampling schedulers derive from it)
      image_encoder/           the CLIP vision tower + image processor
      generator.safetensors    the GAN snapshot whose W space the prior models

The generator travels with the prior because a prior is meaningless for any
other generator's W space; ``generator=`` overrides it (e.g. a newer EMA of
the same run).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, PriorTransformer
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from avatar3d.gan.snapshot import load_snapshot
from avatar3d.prior.encoder import ImageEncoder, as_rgb, check_image
from avatar3d.prior.model import sample_w, sampling_scheduler
from avatar3d.prior.views import render_w
from avatar3d.safeio import check_format

PRIOR_FORMAT = "avatar3d.w-prior/1"
PRIOR_JSON = "avatar3d_prior.json"
GENERATOR_FILE = "generator.safetensors"
DEFAULT_YAWS = (-60.0, -30.0, 0.0, 30.0, 60.0, 180.0)


@dataclass
class ImageToAvatarOutput:
    """What one call returns, per input image i."""

    w: torch.Tensor                  # (N, w_dim) sampled latents
    embeddings: torch.Tensor         # (N, D) unit-norm CLIP embeddings of the inputs
    views: np.ndarray                # (N, V, H, W, 3) uint8 renders
    yaws: list[float]
    pitches: list[float]
    turntable: np.ndarray | None = None  # (N, T, H, W, 3) uint8 frames over 360 deg, if asked for
    meta: dict[str, Any] = field(default_factory=dict)


class ImageToAvatarPipeline:
    """Components: ``image_encoder``, ``prior``, ``scheduler`` (DDPM, training), ``generator`` (the GAN)."""

    def __init__(self, image_encoder: ImageEncoder, prior, scheduler, generator, defaults: dict | None = None):
        self.image_encoder = image_encoder
        self.prior = prior.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.generator = generator
        self.defaults = {"sampler": "ddim", "num_inference_steps": 25, "guidance_scale": 3.0,
                         **(defaults or {})}

    # -- saving / loading ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path, generator: str | Path | None = None,
                        device: str | torch.device = "cpu") -> "ImageToAvatarPipeline":
        folder = Path(folder)
        meta = read_prior_meta(folder)
        prior = PriorTransformer.from_pretrained(folder / "prior").to(device)
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        enc = folder / "image_encoder"
        model = CLIPVisionModelWithProjection.from_pretrained(enc)
        processor = CLIPImageProcessor.from_pretrained(enc)
        encoder = ImageEncoder(model=model.to(device).eval().requires_grad_(False), processor=processor,
                               name=meta.get("image_encoder", str(enc)))
        G = load_snapshot(generator or folder / GENERATOR_FILE, device).generator
        if G.w_dim != prior.config.embedding_dim:
            raise ValueError(f"generator: its w_dim {G.w_dim} differs from the prior's {prior.config.embedding_dim}; "
                             "pass the snapshot the prior's pairs were built from")
        return cls(encoder, prior, scheduler, G, defaults=meta.get("sampling"))

    def save_pretrained(self, folder: str | Path, generator_snapshot: str | Path, extra: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.prior.save_pretrained(folder / "prior")
        self.scheduler.save_pretrained(folder / "scheduler")
        self.image_encoder.save_pretrained(folder / "image_encoder")
        if Path(generator_snapshot).resolve() != (folder / GENERATOR_FILE).resolve():
            shutil.copyfile(generator_snapshot, folder / GENERATOR_FILE)
        meta = {"format": PRIOR_FORMAT, "w_dim": int(self.prior.config.embedding_dim),
                "embed_dim": int(self.image_encoder.dim), "image_encoder": self.image_encoder.name,
                "sampling": self.defaults, **(extra or {})}
        (folder / PRIOR_JSON).write_text(json.dumps(meta, indent=2))
        return folder

    # -- the recipe --------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, images, seed: int = 0, guidance_scale: float | None = None,
                 num_inference_steps: int | None = None, sampler: str | None = None,
                 yaws=DEFAULT_YAWS, pitches=None, turntable_frames: int = 0,
                 truncation_psi: float = 1.0) -> ImageToAvatarOutput:
        """Images (PIL, HxWx3 uint8, or a list of them) -> sampled w and renders from ``yaws``.

        Identity i is sampled with seed ``seed + i``; the same inputs and seed
        give the same output. ``truncation_psi`` < 1 pulls w toward the
        generator's average w (EG3D's truncation trick, applied to the sample).
        """
        guidance_scale = self.defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        steps = num_inference_steps or self.defaults["num_inference_steps"]
        sampler = sampler or self.defaults["sampler"]
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale: {guidance_scale} must be >= 0 (1 = no guidance)")

        # 1. Check and prepare the images.
        images = prepare_images(images)

        # 2. Embed them with the CLIP vision tower.
        embeddings = self.image_encoder.embed(images)

        # 3. Sample one w per image with classifier-free guidance (each image its own seeded noise).
        scheduler = sampling_scheduler(self.scheduler.config, sampler)
        w = torch.cat([sample_w(self.prior, scheduler, embeddings[i:i + 1], guidance_scale, steps,
                                torch.Generator().manual_seed(seed + i)) for i in range(len(images))])
        if truncation_psi != 1.0:
            w_avg = self.generator.mapping_net.w_avg.to(w)
            w = w_avg.lerp(w, truncation_psi)

        # 4. Render the views (and a turntable) of each identity.
        G = self.generator
        seeds = [seed + i for i in range(len(images))]
        yaws = [float(y) for y in yaws]
        pitches = [0.0] * len(yaws) if pitches is None else [float(p) for p in np.broadcast_to(pitches, len(yaws))]
        views = render_w(G, w, yaws, pitches, seeds)
        turntable = None
        if turntable_frames:
            frame_yaws = np.linspace(0.0, 360.0, turntable_frames, endpoint=False)
            turntable = render_w(G, w, frame_yaws, np.zeros_like(frame_yaws), seeds)
        return ImageToAvatarOutput(w=w.cpu(), embeddings=embeddings, views=views, yaws=yaws, pitches=pitches,
                                   turntable=turntable,
                                   meta={"seed": seed, "guidance_scale": guidance_scale, "num_inference_steps": steps,
                                         "sampler": sampler, "truncation_psi": truncation_psi,
                                         "image_encoder": self.image_encoder.name})


def prepare_images(images) -> list[Image.Image]:
    """One image or a list of them (PIL or HxWx3/HxWx4 uint8 arrays) -> checked RGB PIL images."""
    if isinstance(images, (Image.Image, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    out = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise ValueError(f"images[{i}]: array of shape {image.shape} and dtype {image.dtype} is not an "
                                 "image; pass HxWx3 uint8 (or a PIL image)")
            image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{i}]: a {type(image).__name__} is not an image; pass PIL images or uint8 arrays")
        out.append(as_rgb(check_image(image, f"images[{i}]")))
    if not out:
        raise ValueError("images: empty; pass at least one image")
    return out


def read_prior_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / PRIOR_JSON
    if not path.is_file():
        raise FileNotFoundError(f"prior: {folder} is not a prior folder (no {PRIOR_JSON}); pass the folder "
                                "written by avatar3d train-prior")
    meta = json.loads(path.read_text())
    check_format(path, meta.get("format"), PRIOR_FORMAT, "load it with the avatar3d release that wrote it, or "
                 "train the prior again with this one", field="prior")
    return meta
