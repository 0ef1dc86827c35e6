"""Stable Diffusion + ControlNet pipeline factory for multi-view data (docs/method.md section 2).

One factory, two presets:

* ``sd15``: diffusers' ``StableDiffusionControlNetPipeline`` from hub ids or
  local folders (SD 1.5 and lllyasviel's v1.1 OpenPose / depth ControlNets by
  default). ``hybrid`` guidance loads both ControlNets; diffusers wraps a list
  of ControlNets in a ``MultiControlNetModel``.
* ``tiny``: the same classes built from tiny configs with random weights and
  the offline CLIP tokenizer. Construction runs under a fixed torch seed, so
  the weights are identical every time and in every process (Ray actors
  rebuild the pipeline themselves). After construction it is the same code
  path as real weights: same pipeline class, schedulers, LoRA loading and
  :func:`generate`.

Determinism: :func:`generate` gives every sample its own CPU
``torch.Generator`` seeded with the sample's seed, so the initial latents of
a sample depend on its seed only, never on the batch it lands in. CPU
generators (rather than CUDA ones) also give the same latents on any GPU type.
Whether the *denoised* image is bit-identical across batch sizes depends on
the kernels (batched matmuls may block differently); the tests check it for
the CPU path.

This module imports no Ray (a registered LoRA is fetched through
:mod:`avatar3d.tracking.models`): the job wraps it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import diffusers
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from diffusers.models import MultiControlNetModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from avatar3d.datagen.config import GUIDANCE_TYPES, LORA_WEIGHTS, SCHEDULERS, TINY_WEIGHT_SEED, PipelineConfig
from avatar3d.datagen.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, build_clip_tokenizer
from avatar3d.hub import ModelUnavailableError, check_model_available  # noqa: F401  (re-exported)
from avatar3d.tracking.models import is_mlflow_uri, resolve_model_uri

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- availability


def check_models_available(cfg: PipelineConfig) -> None:
    """Check every model the config needs (nothing to check for the tiny and procedural presets)."""
    if cfg.preset == "procedural":
        return
    if cfg.preset != "tiny":
        check_model_available(cfg.base_model, "pipeline.base_model")
        names = {"openpose": "pipeline.controlnet_openpose", "depth": "pipeline.controlnet_depth"}
        for kind, model_id in zip(cfg.controlnet_kinds, cfg.controlnet_ids()):
            check_model_available(model_id, names[kind])
    if cfg.lora:
        _check_lora_available(cfg)


def resolve_lora(uri_or_path: str, tracking_uri: str | None = None, field: str = "pipeline.lora") -> str:
    """A ``pipeline.lora`` value -> what ``load_lora_weights`` takes.

    A local folder or ``.safetensors`` file, or a hub id, is returned as is (``~``
    expanded); a registered LoRA (``models:/<name>/<version>``, ``@<alias>``, or
    ``runs:/...``) is fetched once through :func:`avatar3d.tracking.models.resolve_model_uri`
    (every Ray actor then reads the cached copy) and the folder holding
    :data:`LORA_WEIGHTS` is returned.
    """
    value = str(uri_or_path)
    if not is_mlflow_uri(value):
        return os.path.expanduser(value)
    folder = resolve_model_uri(value, tracking_uri, field=field)
    hits = sorted(Path(folder).rglob(LORA_WEIGHTS))
    if not hits:
        raise ValueError(f"{field}: {value} holds no {LORA_WEIGHTS}; pass a LoRA registered by avatar3d lora-train")
    return str(hits[0].parent)


def _check_lora_available(cfg: PipelineConfig) -> None:
    if is_mlflow_uri(cfg.lora):
        try:
            resolve_lora(cfg.lora)  # downloads once into the cache the actors then read
        except ValueError as err:
            raise ModelUnavailableError(str(err)) from None
    elif not os.path.exists(os.path.expanduser(cfg.lora)):
        if cfg.preset == "tiny":
            raise ModelUnavailableError(f"pipeline.lora={cfg.lora!r}: file or folder not found")
        check_model_available(cfg.lora, "pipeline.lora")


# --------------------------------------------------------------------------- construction


def assigned_gpu_ids() -> list[str]:
    """The GPUs Ray gave this process (an actor or task with ``num_gpus``); [] outside Ray.

    Ray is asked only when the process already runs it (this module imports no Ray).
    """
    ray = sys.modules.get("ray")
    if ray is None:
        return []
    try:
        if not ray.is_initialized():
            return []
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001 - a driver, or a Ray without the call: no GPUs of its own
        return []


# Once per process (one Ray actor = one process): the painter says it once, not per batch.
_said_cpu_despite_gpu = False


def resolve_device(device: str) -> str:
    gpus = assigned_gpu_ids()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        held = f" (Ray gave this process GPU {','.join(gpus)}, but torch sees no CUDA device)" if gpus else ""
        raise ValueError(f"pipeline.device='cuda' but no CUDA device is visible{held}: "
                         "pass device=cpu or device=auto")
    if gpus and device == "cpu":
        _say_cpu_despite_gpu(gpus)
    return device


def _say_cpu_despite_gpu(gpus: list[str]) -> None:
    """One line per process: a GPU was reserved for it (e.g. a label on a CPU-only node) but it computes on the CPU."""
    global _said_cpu_despite_gpu
    if _said_cpu_despite_gpu:
        return
    _said_cpu_despite_gpu = True
    why = ("torch sees no CUDA device (a GPU label on a node without CUDA?)" if not torch.cuda.is_available()
           else "pipeline.device=cpu")
    log.warning(f"pid {os.getpid()} holds Ray GPU {','.join(gpus)} but runs the diffusion pipeline on the CPU: {why}")


def torch_dtype(name: str):
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


@contextlib.contextmanager
def _seeded(seed: int):
    """Fixed torch RNG inside, the caller's RNG state untouched outside."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_controlnet():
    # Two conditioning-embedding blocks = one 2x downsampling, matching the
    # tiny VAE's 2x latent scale (SD's 4 blocks match its 8x VAE).
    return ControlNetModel(
        block_out_channels=(4, 8), layers_per_block=2, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32,
        conditioning_embedding_out_channels=(16, 32), norm_num_groups=1,
    )


def build_tiny_components(guidance: str) -> dict:
    """Random tiny components for ``StableDiffusionControlNetPipeline``, identical on every call."""
    with _seeded(TINY_WEIGHT_SEED):
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=1,
        )
    kinds = ("openpose", "depth") if guidance == "hybrid" else (guidance,)
    controlnets = []
    for i, kind in enumerate(kinds):
        # Each kind gets its own seed so openpose and depth nets differ, and a
        # given kind has the same weights whether or not it is alone.
        with _seeded(TINY_WEIGHT_SEED + 1 + GUIDANCE_TYPES.index(kind)):
            controlnets.append(_tiny_controlnet())
    with _seeded(TINY_WEIGHT_SEED + 10):
        vae = AutoencoderKL(
            block_out_channels=(4, 8), in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, norm_num_groups=2,
        )
    with _seeded(TINY_WEIGHT_SEED + 11):
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, vocab_size=VOCAB_SIZE,
            max_position_embeddings=77,
        ))
    # SD 1.5's noise schedule; the configured sampler is derived from it.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(
        unet=unet, controlnet=controlnets if len(controlnets) > 1 else controlnets[0], vae=vae,
        text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _load_controlnets(cfg: PipelineConfig, dtype):
    # Heavy: only the sd15 preset (real weights) needs these.

    names = {"openpose": "pipeline.controlnet_openpose", "depth": "pipeline.controlnet_depth"}
    nets = []
    for kind, model_id in zip(cfg.controlnet_kinds, cfg.controlnet_ids()):
        nets.append(_from_pretrained(ControlNetModel, model_id, names[kind], dtype=dtype))
    # from_pretrained wants one module; the constructor alone accepts a list.
    return MultiControlNetModel(nets) if len(nets) > 1 else nets[0]


def _from_pretrained(cls, model_id: str, field_name: str, **kwargs):
    try:
        return cls.from_pretrained(os.path.expanduser(model_id), **kwargs)
    except OSError:
        # Turn diffusers' multi-paragraph cache-miss error into our one line.
        check_model_available(model_id, field_name)
        raise


def build_pipeline(cfg: PipelineConfig):
    """-> a ready ``StableDiffusionControlNetPipeline`` on the configured device and dtype."""
    # Heavy: `lora-train --help` (through lora.config), the dataset reader and the procedural preset import
    # this module, and none of them may pay for torch or diffusers.


    cfg.validate()
    device = resolve_device(cfg.device)
    dtype = torch_dtype(cfg.dtype)
    if device == "cpu" and dtype == torch.float16:
        raise ValueError("pipeline.dtype='float16' on CPU is not supported by every kernel: pass dtype=float32 or bfloat16")

    if cfg.preset == "tiny":
        pipe = StableDiffusionControlNetPipeline(**build_tiny_components(cfg.guidance))
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    else:
        check_models_available(cfg)  # one line naming the first missing model, before any loading
        controlnet = _load_controlnets(cfg, dtype)
        pipe = _from_pretrained(
            StableDiffusionControlNetPipeline, cfg.base_model, "pipeline.base_model",
            controlnet=controlnet, safety_checker=None, requires_safety_checker=False, dtype=dtype,
        )
    scheduler_cls = getattr(diffusers, SCHEDULERS[cfg.scheduler])
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    if cfg.lora:
        # A folder, a .safetensors file, a hub id, or models:/<name>/<version> from lora-train's registry.
        pipe.load_lora_weights(resolve_lora(cfg.lora))
        # Fusing folds the LoRA into the UNet weights: no per-step adapter cost.
        pipe.fuse_lora(lora_scale=cfg.lora_scale)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- generation


def _to_pil(image):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(arr[..., :3], "RGB")


def generate(
    pipe,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    control_images: Sequence[Sequence],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance_scale: float,
    conditioning_scales: Sequence[float],
    height: int,
    width: int,
) -> list[np.ndarray]:
    """Paint one image per prompt -> list of (H, W, 3) uint8 arrays.

    control_images: one sequence per ControlNet (in ``PipelineConfig.controlnet_kinds``
    order), each with one image per prompt (PIL, or HWC / HW array, uint8 or
    float in [0, 1]). conditioning_scales: one per ControlNet.
    """

    n = len(prompts)
    if not (len(negative_prompts) == len(seeds) == n):
        raise ValueError(f"generate: got {n} prompts, {len(negative_prompts)} negative prompts, {len(seeds)} seeds: pass one of each per image")
    if len(control_images) != len(conditioning_scales):
        raise ValueError(f"generate: {len(control_images)} control image lists for {len(conditioning_scales)} ControlNets")
    for images in control_images:
        if len(images) != n:
            raise ValueError(f"generate: a ControlNet got {len(images)} images for {n} prompts")
    # One CPU generator per sample: its initial latents depend on its seed only.
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    controls = [[_to_pil(im) for im in images] for images in control_images]
    multi = len(controls) > 1
    with torch.inference_mode():
        out = pipe(
            prompt=list(prompts),
            negative_prompt=list(negative_prompts),
            # Several ControlNets take one [image per net] list per sample.
            image=[list(per_sample) for per_sample in zip(*controls)] if multi else controls[0],
            controlnet_conditioning_scale=[float(s) for s in conditioning_scales] if multi else float(conditioning_scales[0]),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=generators,
            output_type="np",
        )
    images = np.asarray(out.images)
    # Same rounding as diffusers' numpy_to_pil.
    return [u8 for u8 in (images * 255.0).round().clip(0, 255).astype(np.uint8)]


def generate_from_config(pipe, cfg: PipelineConfig, prompts, negative_prompts, control_images, seeds,
                         height: int, width: int) -> list[np.ndarray]:
    """:func:`generate` with steps, guidance and conditioning scales taken from ``cfg``."""
    scales = dict(zip(("openpose", "depth"), cfg.conditioning_scales))
    return generate(
        pipe, prompts, negative_prompts, control_images, seeds, steps=cfg.steps,
        guidance_scale=cfg.guidance_scale, conditioning_scales=[scales[k] for k in cfg.controlnet_kinds],
        height=height, width=width,
    )
