"""Options of ``avatar3d generate`` (jobs/configs/generate_*.yaml): data and checks only, so ``--help``
and the chain read them without loading Ray or torch; :mod:`avatar3d.datagen.job` runs them."""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from avatar3d.config import ConfigError, writable_dir
from avatar3d.datagen.pipeline import GUIDANCE_TYPES, PipelineConfig
from avatar3d.datagen.procedural import ProceduralOptions
from avatar3d.prompts import load_attributes, load_styles
from avatar3d.tracking.options import TrackingOptions


@dataclass
class GenerateConfig:
    """``avatar3d generate``: styles x views x attributes -> multi-view Parquet dataset."""

    num_samples: int = field(default=16, metadata={"help": "images in the dataset (N)", "min": 1})
    seed: int = field(default=0, metadata={"help": "master seed; sample i depends on (seed, i) only", "min": 0})
    styles: list[str] | None = field(
        default=None, metadata={"help": "style names to use (default: all styles of styles_file / the 50 built-ins)"})
    styles_file: str | None = field(
        default=None, metadata={"help": "your own styles: .yaml list or .txt with one style per line"})
    attributes_file: str | None = field(default=None, metadata={"help": "your own attribute categories (.yaml)"})
    num_attributes: int = field(default=5, metadata={"help": "attribute categories sampled per image", "min": 0})
    guidance: Literal["openpose", "depth", "hybrid"] = field(
        default="hybrid", metadata={"help": "pose guidance: openpose, depth, or both (hybrid)", "choices": list(GUIDANCE_TYPES)})
    resolution: int = field(default=512, metadata={"help": "image size in pixels (square, multiple of 8)", "min": 8})
    yaw_range: tuple[float, float] = field(default=(-180.0, 180.0), metadata={"help": "camera yaw range, degrees"})
    pitch_range: tuple[float, float] = field(default=(-30.0, 30.0), metadata={"help": "camera elevation range, degrees"})
    output_dir: str = field(default="outputs/datagen", metadata={"help": "dataset folder (re-run to resume)"})
    rows_per_file: int = field(default=1000, metadata={"help": "max rows per Parquet shard", "min": 1})
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
        writable_dir(self.output_dir, "output_dir", create=False)
        return self

    def resolved_styles(self):
        """The Style list this job uses; unknown or empty selections raise ConfigError."""
        try:
            available = load_styles(self.styles_file) if self.styles_file else load_styles()
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


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid: pass an integer >= {minimum}")
