"""Options of ``avatar3d lora-train`` (jobs/configs/lora_sd15.yaml): data only, so ``--help`` stays light."""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Literal

from avatar3d.config import INPUT, MODEL, ConfigError, seed_field
from avatar3d.datagen.config import DEFAULT_BASE_MODEL
from avatar3d.tracking.options import TrackingOptions

PRESETS = ("sd15", "tiny")  # sd15: real weights; tiny: random weights built from configs (tests)
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class LoraTrainConfig:
    """``avatar3d lora-train``: a character LoRA from a folder of images."""

    images: str = field(default="", metadata={"help": "folder of ~10 images of the character (required)", "path": INPUT})
    token: str = field(default="", metadata={"help": "the character's trigger word in prompts, e.g. '<mychar>' (required)"})
    style: str = field(default="cartoon", metadata={"help": "style words for the captions, e.g. 'cartoon', '3D render'"})
    caption_template: str = field(
        default="a {style} portrait of {token}", metadata={"help": "caption of every image; {token} required, {style} optional"})
    min_images: int = field(default=5, metadata={"help": "refuse folders with fewer images", "min": 1})
    preset: Literal["sd15", "tiny"] = field(
        default="sd15", metadata={"help": "sd15: real SD 1.5 weights; tiny: the tiny random model for tests", "choices": list(PRESETS)})
    base_model: str = field(default=DEFAULT_BASE_MODEL, metadata={"help": "SD 1.5 hub id or local diffusers folder", "path": MODEL})
    rank: int = field(default=8, metadata={"help": "LoRA rank r", "min": 1})
    alpha: int = field(default=8, metadata={"help": "LoRA alpha (update scale = alpha / rank)", "min": 1})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout inside the LoRA branch", "min": 0.0, "max": 1.0})
    target_modules: list[str] = field(
        default_factory=lambda: list(UNET_TARGETS), metadata={"help": "UNet modules that get adapters (attention projections)"})
    train_text_encoder: bool = field(default=False, metadata={"help": "also put adapters on the CLIP text encoder"})
    text_encoder_target_modules: list[str] = field(
        default_factory=lambda: list(TEXT_ENCODER_TARGETS), metadata={"help": "text-encoder modules that get adapters"})
    resolution: int = field(default=512, metadata={"help": "training image size (square crop), multiple of 8", "min": 8})
    random_flip: bool = field(default=False, metadata={"help": "mirror images at random (off: characters are rarely symmetric)"})
    steps: int = field(default=800, metadata={"help": "optimiser steps", "min": 1})
    batch_size: int = field(default=1, metadata={"help": "images per step", "min": 1})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the adapters", "min": 0.0})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay", "min": 0.0})
    lr_warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then constant", "min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)", "min": 0.0})
    snr_gamma: float = field(default=0.0, metadata={"help": "min-SNR loss weighting gamma (0 = plain MSE; 5 is usual)", "min": 0.0})
    seed: int = seed_field(help="seed of every random draw")
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "auto = cuda when available", "choices": list(DEVICES)})
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = field(
        default="auto", metadata={"help": "frozen weights in fp16/bf16 on GPU (auto: bf16 if supported, else fp16; no on CPU)",
                                  "choices": list(MIXED_PRECISION)})
    log_every: int = field(default=10, metadata={"help": "steps between progress lines / logged losses", "min": 1})
    probe_repeats: int = field(default=8, metadata={"help": "(noise, t) draws per image for the before/after loss", "min": 1})
    num_samples: int = field(default=4, metadata={"help": "preview images at the end, with and without the LoRA (0 = none)", "min": 0})
    sample_steps: int = field(default=25, metadata={"help": "denoising steps of the previews", "min": 1})
    output_dir: str = field(default="outputs/lora", metadata={"help": "run folder; the LoRA goes to <output_dir>/lora"})
    tracking: TrackingOptions = field(default_factory=lambda: TrackingOptions(experiment="avatar3d-lora"))

    @property
    def caption(self) -> str:
        return self.caption_template.format(token=self.token, style=self.style)

    @property
    def slug(self) -> str:
        """The token as a name: '<My Char>' -> 'my-char'."""
        return re.sub(r"[^a-z0-9]+", "-", self.token.lower()).strip("-") or "character"

    def validate(self) -> "LoraTrainConfig":
        def bad(name, value, expected):
            raise ConfigError(f"{name}={value!r} is not valid: pass {expected}")

        if not str(self.images).strip():
            bad("images", self.images, "the folder of character images (--images DIR)")
        if not self.token.strip() or any(c in self.token for c in "{}\n"):
            bad("token", self.token, "the character's trigger word, e.g. --token '<mychar>' (no braces or newlines)")
        fields = [f for _, f, _, _ in string.Formatter().parse(self.caption_template) if f is not None]
        if "token" not in fields or set(fields) - {"token", "style"}:
            bad("caption_template", self.caption_template, "a text with {token} and optionally {style}, e.g. 'a {style} portrait of {token}'")
        if self.preset not in PRESETS:
            bad("preset", self.preset, f"one of {list(PRESETS)}")
        if self.resolution % 8:
            bad("resolution", self.resolution, f"a multiple of 8 (the VAE's scale), e.g. {max(8, self.resolution // 8 * 8)}")
        if not self.target_modules:
            bad("target_modules", self.target_modules, f"UNet module names, e.g. {list(UNET_TARGETS)}")
        if self.train_text_encoder and not self.text_encoder_target_modules:
            bad("text_encoder_target_modules", self.text_encoder_target_modules, f"e.g. {list(TEXT_ENCODER_TARGETS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", self.mixed_precision, f"one of {list(MIXED_PRECISION)}")
        if self.device not in DEVICES:
            bad("device", self.device, f"one of {list(DEVICES)}")
        if not self.learning_rate > 0:
            bad("learning_rate", self.learning_rate, "a number > 0, e.g. 1e-4")
        return self

    @property
    def default_register_name(self) -> str:
        """The registry name when ``tracking.register_name`` is empty: avatar3d-lora-<token slug>."""
        return f"avatar3d-lora-{self.slug}"
