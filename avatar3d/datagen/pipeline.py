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

This module imports no Ray and no MLflow (a registered LoRA is fetched through
:mod:`avatar3d.tracking.models`, which imports MLflow when it is asked to): the job wraps it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from avatar3d.config import ConfigError  # a ValueError with a one-line message
from avatar3d.hub import ModelUnavailableError, check_model_available  # noqa: F401  (re-exported)
from avatar3d.tracking.models import is_mlflow_uri, resolve_model_uri

GUIDANCE_TYPES = ("openpose", "depth", "hybrid")
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
PRESETS = ("sd15", "tiny", "procedural")
# Scheduler names -> diffusers class names. Every one is built with
# ``from_config(base_scheduler.config)`` so the noise schedule of the
# checkpoint (betas, prediction type) is kept.
SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
}

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET_OPENPOSE = "lllyasviel/control_v11p_sd15_openpose"
DEFAULT_CONTROLNET_DEPTH = "lllyasviel/control_v11f1p_sd15_depth"
# Names recorded in the dataset for the tiny preset (it has no hub id).
TINY_MODEL_ID = "avatar3d/tiny-random-sd"
TINY_CONTROLNET_IDS = {"openpose": "avatar3d/tiny-random-controlnet-openpose",
                       "depth": "avatar3d/tiny-random-controlnet-depth"}
# Fixed seeds for the tiny preset's random weights, one per component.
TINY_WEIGHT_SEED = 0


@dataclass
class PipelineConfig:
    """How to build the diffusion pipeline. ``preset=tiny`` ignores the model ids."""

    preset: Literal["sd15", "tiny", "procedural"] = field(
        default="sd15", metadata={"help": "sd15: real weights (hub ids or local folders); tiny: random tiny weights for tests; "
                                          "procedural: the parametric avatar painter with known truth (no diffusion)", "choices": list(PRESETS)})
    base_model: str = field(
        default=DEFAULT_BASE_MODEL, metadata={"help": "SD 1.5 hub id or local diffusers folder"})
    controlnet_openpose: str = field(
        default=DEFAULT_CONTROLNET_OPENPOSE, metadata={"help": "OpenPose ControlNet hub id or local folder"})
    controlnet_depth: str = field(
        default=DEFAULT_CONTROLNET_DEPTH, metadata={"help": "depth ControlNet hub id or local folder"})
    guidance: Literal["openpose", "depth", "hybrid"] = field(
        default="hybrid", metadata={"help": "which ControlNet(s): hybrid = OpenPose + depth at once", "choices": list(GUIDANCE_TYPES)})
    lora: str | None = field(
        default=None, metadata={"help": "LoRA weights (folder, .safetensors or models:/<name>/<version>) loaded into the UNet, e.g. a character LoRA"})
    lora_scale: float = field(default=1.0, metadata={"help": "LoRA strength", "min": 0.0})
    dtype: Literal["float32", "float16", "bfloat16"] = field(
        default="float32", metadata={"help": "weights dtype; float16/bfloat16 on GPU", "choices": list(DTYPES)})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "auto = cuda when available", "choices": list(DEVICES)})
    scheduler: str = field(default="unipc", metadata={"help": "sampler", "choices": list(SCHEDULERS)})
    steps: int = field(default=20, metadata={"help": "denoising steps", "min": 1, "max": 1000})
    guidance_scale: float = field(default=7.5, metadata={"help": "classifier-free guidance scale", "min": 0.0})
    conditioning_scales: tuple[float, float] = field(
        default=(1.0, 1.0), metadata={"help": "ControlNet strengths (openpose, depth)"})

    def validate(self) -> "PipelineConfig":
        def bad(name, value, expected):
            raise ConfigError(f"pipeline.{name}={value!r} is not valid: pass {expected}")

        if self.preset not in PRESETS:
            bad("preset", self.preset, f"one of {list(PRESETS)}")
        if self.preset == "procedural" and self.lora:
            bad("lora", self.lora, "no LoRA with preset=procedural (it paints without a diffusion model)")
        if self.guidance not in GUIDANCE_TYPES:
            bad("guidance", self.guidance, f"one of {list(GUIDANCE_TYPES)}")
        if self.dtype not in DTYPES:
            bad("dtype", self.dtype, f"one of {list(DTYPES)}")
        if self.device not in DEVICES:
            bad("device", self.device, f"one of {list(DEVICES)}")
        if self.scheduler not in SCHEDULERS:
            bad("scheduler", self.scheduler, f"one of {sorted(SCHEDULERS)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            bad("steps", self.steps, "an integer >= 1")
        if self.guidance_scale < 0:
            bad("guidance_scale", self.guidance_scale, "a number >= 0")
        scales = tuple(self.conditioning_scales)
        if len(scales) != 2 or any(s < 0 for s in scales):
            bad("conditioning_scales", self.conditioning_scales, "two numbers >= 0: (openpose, depth)")
        return self

    @property
    def controlnet_kinds(self) -> tuple[str, ...]:
        """ControlNets in the order the pipeline takes their images."""
        return ("openpose", "depth") if self.guidance == "hybrid" else (self.guidance,)

    def controlnet_ids(self) -> list[str]:
        if self.preset == "procedural":
            return []
        if self.preset == "tiny":
            return [TINY_CONTROLNET_IDS[k] for k in self.controlnet_kinds]
        ids = {"openpose": self.controlnet_openpose, "depth": self.controlnet_depth}
        return [ids[k] for k in self.controlnet_kinds]

    def model_ids(self) -> dict:
        """What the dataset records about the models that painted it."""
        if self.preset == "procedural":
            # Local: the painter module (with the dataset reader and pyarrow) is ~80 ms, and `lora-train --help`
            # imports this module (lora.config -> DEFAULT_BASE_MODEL); only the procedural preset needs the name.
            from avatar3d.datagen.procedural import PAINTER_ID

            return {"base_model": PAINTER_ID, "controlnets": [], "lora": ""}
        return {
            "base_model": TINY_MODEL_ID if self.preset == "tiny" else self.base_model,
            "controlnets": self.controlnet_ids(),
            "lora": self.lora or "",
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["conditioning_scales"] = list(self.conditioning_scales)
        return d


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


def resolve_device(device: str) -> str:
    import torch  # heavy: `lora-train --help` and the dataset reader import this module

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("pipeline.device='cuda' but no CUDA device is visible: pass device=cpu or device=auto")
    return device


def torch_dtype(name: str):
    import torch  # heavy: `lora-train --help` and the dataset reader import this module

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


@contextlib.contextmanager
def _seeded(seed: int):
    """Fixed torch RNG inside, the caller's RNG state untouched outside."""
    import torch  # heavy: `lora-train --help` and the dataset reader import this module

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_controlnet():
    from diffusers import ControlNetModel  # heavy: only the tiny and sd15 presets need diffusers

    # Two conditioning-embedding blocks = one 2x downsampling, matching the
    # tiny VAE's 2x latent scale (SD's 4 blocks match its 8x VAE).
    return ControlNetModel(
        block_out_channels=(4, 8), layers_per_block=2, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32,
        conditioning_embedding_out_channels=(16, 32), norm_num_groups=1,
    )


def build_tiny_components(guidance: str) -> dict:
    """Random tiny components for ``StableDiffusionControlNetPipeline``, identical on every call."""
    # Heavy, and only the tiny preset needs them (the tokenizer module imports transformers too).
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from avatar3d.datagen.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, build_clip_tokenizer

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
    from diffusers import ControlNetModel
    from diffusers.models import MultiControlNetModel

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
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    import diffusers

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
    import torch  # heavy: `lora-train --help` and the dataset reader import this module

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
