"""The base text-to-image model a LoRA is trained on and previewed with.

``sd15`` loads diffusers' ``StableDiffusionPipeline`` from a hub id or local
folder; ``tiny`` assembles the same class from the tiny seeded components of
:mod:`avatar3d.datagen.pipeline` (the UNet there is the UNet of the tiny
ControlNet pipeline, bit for bit, so a LoRA trained here loads there). From
here on both presets run the same code.

No MLflow, no Ray: the trainer and the registry's pyfunc both use this.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler

from avatar3d.datagen.config import TINY_MODEL_ID
from avatar3d.datagen.pipeline import build_tiny_components
from avatar3d.hub import check_model_available

PRESETS = ("sd15", "tiny")


def base_model_id(preset: str, base_model: str) -> str:
    """The name recorded for the base model (the tiny preset has no hub id)."""
    return TINY_MODEL_ID if preset == "tiny" else base_model


def load_base_pipeline(preset: str, base_model: str, field: str = "base_model"):
    """-> float32 ``StableDiffusionPipeline`` on the CPU (the caller moves and casts it)."""
    if preset == "tiny":
        parts = build_tiny_components("openpose")
        parts.pop("controlnet")
        return StableDiffusionPipeline(**parts)
    if preset != "sd15":
        raise ValueError(f"preset={preset!r} is not known: pass one of {list(PRESETS)}")
    check_model_available(base_model, field)  # one line before any loading
    # dtype given: transformers loads the text encoder in the dtype it was saved in (fp16 for most SD folders)
    # unless told, while diffusers loads its models in float32; a mixed pipeline fails at its first sample.
    return StableDiffusionPipeline.from_pretrained(
        os.path.expanduser(base_model), safety_checker=None, requires_safety_checker=False, dtype=torch.float32)


def sample_images(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, size: int,
                  guidance_scale: float = 7.5, negative_prompt: str = "") -> list[np.ndarray]:
    """Text-to-image previews -> (size, size, 3) uint8 arrays, one CPU generator per seed (as in datagen)."""
    if not isinstance(pipe.scheduler, UniPCMultistepScheduler):
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    with torch.inference_mode():
        out = pipe(prompt=list(prompts), negative_prompt=[negative_prompt] * len(prompts), height=size, width=size,
                   num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators, output_type="np")
    return list((np.asarray(out.images) * 255.0).round().clip(0, 255).astype(np.uint8))
