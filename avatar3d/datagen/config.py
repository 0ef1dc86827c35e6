"""Options of ``avatar3d generate`` (jobs/configs/generate_*.yaml) and of its painter (``PipelineConfig``):
data and checks only, so ``--help``, the chain and ``lora-train`` read them without loading Ray, torch or
diffusers; :mod:`avatar3d.datagen.pipeline` builds the painter, :mod:`avatar3d.datagen.job` runs the job."""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from avatar3d.config import INPUT, MODEL, ConfigError, check_fits_in_memory, seed_field, writable_dir
from avatar3d.datagen.procedural import PAINTER_ID, ProceduralOptions
from avatar3d.prompts import load_attributes, load_styles
from avatar3d.tracking.options import TrackingOptions


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
        default=DEFAULT_BASE_MODEL, metadata={"help": "SD 1.5 hub id or local diffusers folder", "path": MODEL})
    controlnet_openpose: str = field(
        default=DEFAULT_CONTROLNET_OPENPOSE, metadata={"help": "OpenPose ControlNet hub id or local folder", "path": MODEL})
    controlnet_depth: str = field(
        default=DEFAULT_CONTROLNET_DEPTH, metadata={"help": "depth ControlNet hub id or local folder", "path": MODEL})
    guidance: Literal["openpose", "depth", "hybrid"] = field(
        default="hybrid", metadata={"help": "which ControlNet(s): hybrid = OpenPose + depth at once", "choices": list(GUIDANCE_TYPES)})
    lora: str | None = field(
        default=None, metadata={"help": "LoRA weights (folder, .safetensors or models:/<name>/<version>) loaded into the UNet, e.g. a character LoRA", "path": MODEL})
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


SHARD_WRITERS = ("driver", "workers")  # who writes the Parquet shards (avatar3d.datagen.job)


@dataclass
class GenerateConfig:
    """``avatar3d generate``: styles x views x attributes -> multi-view Parquet dataset."""

    num_samples: int = field(default=16, metadata={"help": "images in the dataset (N)", "min": 1})
    seed: int = seed_field(help="master seed; sample i depends on (seed, i) only")
    styles: list[str] | None = field(
        default=None, metadata={"help": "style names to use (default: all styles of styles_file / the 50 built-ins)"})
    styles_file: str | None = field(
        default=None, metadata={"help": "your own styles: .yaml list or .txt with one style per line", "path": INPUT})
    attributes_file: str | None = field(default=None, metadata={"help": "your own attribute categories (.yaml)", "path": INPUT})
    num_attributes: int = field(default=5, metadata={"help": "attribute categories sampled per image", "min": 0})
    guidance: Literal["openpose", "depth", "hybrid"] = field(
        default="hybrid", metadata={"help": "pose guidance: openpose, depth, or both (hybrid)", "choices": list(GUIDANCE_TYPES)})
    resolution: int = field(default=512, metadata={"help": "image size in pixels (square, multiple of 8)", "min": 8})
    yaw_range: tuple[float, float] = field(default=(-180.0, 180.0), metadata={"help": "camera yaw range, degrees"})
    pitch_range: tuple[float, float] = field(default=(-30.0, 30.0), metadata={"help": "camera elevation range, degrees"})
    output_dir: str = field(default="outputs/datagen", metadata={"help": "dataset folder (re-run to resume)"})
    rows_per_file: int = field(default=1000, metadata={"help": "max rows per Parquet shard", "min": 1})
    shard_writer: Literal["driver", "workers"] = field(
        default="driver", metadata={"help": "who writes the shards: the driver (every PNG passes through it; "
                                            "~350 rows/s at 512 px) or the painting actors (the driver only "
                                            "commits; output_dir must be visible from every node)",
                                    "choices": list(SHARD_WRITERS)})
    batch_size: int = field(default=8, metadata={"help": "images per ControlNet call", "min": 1})
    min_actors: int = field(default=1, metadata={"help": "ControlNet actor pool: minimum size", "min": 1})
    max_actors: int = field(default=1, metadata={"help": "ControlNet actor pool: maximum size (autoscaling)", "min": 1})
    gpus_per_actor: float = field(default=0.0, metadata={"help": "GPUs per ControlNet actor (0 = CPU)", "min": 0.0})
    cpus_per_actor: float = field(default=1.0, metadata={"help": "CPUs per ControlNet actor", "min": 0.0})
    guidance_batch_size: int = field(default=16, metadata={"help": "views per guidance-rendering task", "min": 1})
    guidance_cpus: float = field(default=1.0, metadata={"help": "CPUs per guidance-rendering task", "min": 0.0})
    progress_interval_s: float = field(default=10.0, metadata={"help": "seconds between progress lines", "min": 0.0})
    ray_address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: $RAY_ADDRESS or a local Ray)"})
    ray_progress_bars: bool = field(default=False, metadata={"help": "show Ray Data's own progress bars"})
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    procedural: ProceduralOptions = field(default_factory=ProceduralOptions, metadata={
        "help": "failure model of pipeline.preset=procedural (ControlNet's misses at side and back views)"})
    tracking: TrackingOptions = field(default_factory=lambda: TrackingOptions(experiment="avatar3d-datagen", register=False))

    def validate(self) -> "GenerateConfig":
        """Cross-field checks; raises ConfigError (one line). Reads files, writes nothing."""
        _check_int("num_samples", self.num_samples, 1)
        check_fits_in_memory(self.num_samples, PLAN_BYTES_PER_SAMPLE, "num_samples", "the driver's plan")
        _check_int("resolution", self.resolution, 8)
        if self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution} is not a multiple of 8 (the VAE's scale): pass e.g. "
                              f"{max(8, self.resolution // 8 * 8)} or {self.resolution // 8 * 8 + 8}")
        if self.guidance not in GUIDANCE_TYPES:
            raise ConfigError(f"guidance={self.guidance!r} is not known: pass one of {', '.join(GUIDANCE_TYPES)}")
        # The job's guidance drives the pipeline; a different explicit pipeline.guidance is a contradiction.
        if self.pipeline.guidance != self.guidance:
            if self.pipeline.guidance != PipelineConfig.guidance:
                raise ConfigError(f"pipeline.guidance={self.pipeline.guidance!r} disagrees with guidance={self.guidance!r}: "
                                  f"set only guidance={self.pipeline.guidance}")
            self.pipeline = replace(self.pipeline, guidance=self.guidance)
        try:
            self.pipeline.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.procedural.validate()
        if self.tracking.register or self.tracking.register_name:
            raise ConfigError("tracking.register: generate trains no model to register; drop tracking.register "
                              "and tracking.register_name (the dataset card is logged to the run)")
        if self.shard_writer not in SHARD_WRITERS:
            raise ConfigError(f"shard_writer={self.shard_writer!r} is not known: pass one of {', '.join(SHARD_WRITERS)}")
        for name in ("rows_per_file", "batch_size", "min_actors", "max_actors", "guidance_batch_size"):
            _check_int(name, getattr(self, name), 1)
        if self.max_actors < self.min_actors:
            raise ConfigError(f"max_actors={self.max_actors} < min_actors={self.min_actors}: pass max_actors >= min_actors")
        for name in ("yaw_range", "pitch_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ConfigError(f"{name}={[lo, hi]} is empty: pass [low, high] with low < high")
        if not (-90.0 < self.pitch_range[0] and self.pitch_range[1] < 90.0):
            raise ConfigError(f"pitch_range={list(self.pitch_range)}: elevations must stay inside (-90, 90)")
        self.resolved_styles()
        self._check_attributes()
        self._check_output_dir()
        return self

    def _check_output_dir(self) -> None:
        """A local folder this process can write, or an object-store URI pyarrow can open (s3://, gs://)."""
        from avatar3d.datagen.dataset import check_output_location  # pyarrow: only when validating

        if not check_output_location(self.output_dir, self.tracking):
            writable_dir(self.output_dir, "output_dir", create=False)

    def resolved_styles(self):
        """The Style list this job uses; unknown or empty selections raise ConfigError."""
        try:
            available = load_styles(self.styles_file, field="styles_file") if self.styles_file else load_styles()
        except ValueError as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        if self.styles is None:
            return available
        if len(self.styles) == 0:
            raise ConfigError("styles=[] is empty: pass style names (e.g. styles=[pixar,anime]) or leave styles unset for all")
        by_name = {s.name: s for s in available}
        chosen = []
        for name in self.styles:
            if name not in by_name:
                close = difflib.get_close_matches(name, list(by_name), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known styles: {', '.join(list(by_name)[:8])}, ..."
                raise ConfigError(f"styles: unknown style {name!r}; {hint}")
            chosen.append(by_name[name])
        if len({s.name for s in chosen}) != len(chosen):
            raise ConfigError(f"styles={self.styles} names a style twice: pass each style once")
        return chosen

    def _check_attributes(self):
        if self.attributes_file is None:
            return
        try:
            categories = load_attributes(self.attributes_file)
        except ValueError as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        if self.num_attributes > len(categories):
            raise ConfigError(f"num_attributes={self.num_attributes} > the {len(categories)} categories in "
                              f"{self.attributes_file}: pass num_attributes <= {len(categories)}")

    def content_fingerprint(self) -> dict:
        """Everything that fixes what row i looks like (not N, not how it is executed)."""
        styles = [[s.name, s.text] for s in self.resolved_styles()]
        attributes = None
        if self.attributes_file:
            attributes = hashlib.sha256(Path(self.attributes_file).read_bytes()).hexdigest()
        p = self.pipeline
        return {
            "seed": self.seed, "styles": styles, "attributes_file_sha256": attributes,
            "num_attributes": self.num_attributes, "guidance": self.guidance, "resolution": self.resolution,
            "yaw_range": list(self.yaw_range), "pitch_range": list(self.pitch_range),
            "model_ids": p.model_ids(), "lora_scale": p.lora_scale, "scheduler": p.scheduler, "steps": p.steps,
            "guidance_scale": p.guidance_scale, "conditioning_scales": list(p.conditioning_scales), "dtype": p.dtype,
            **({"procedural": self.procedural.to_dict()} if p.preset == "procedural" else {}),
        }


PLAN_BYTES_PER_SAMPLE = 1024  # the driver's spec table: ~850 B a row measured (prompts, camera, ids), rounded up


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid: pass an integer >= {minimum}")
