"""Options of ``avatar3d train-gan`` (jobs/configs/train_gan_*.yaml).

One config serves every scale (nanoGPT's habit): the tiny CPU run and the
8-GPU paper run differ only in values. ``model`` picks a GAN preset and
overrides any :class:`avatar3d.gan.config.GANConfig` field by name.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from avatar3d.config import INPUT, ConfigError, check_name, closest, coerce, seed_field
from avatar3d.evaluation.options import FIDOptions, TruthOptions
from avatar3d.tracking.options import TrackingOptions


@dataclass
class DataOptions:
    path: str = field(default="", metadata={"help": "dataset folder written by avatar3d generate", "path": INPUT})
    mirror: bool = field(default=True, metadata={"help": "x-flip augmentation with label mirroring"})
    shuffle_labels: bool = field(default=False, metadata={
        "help": "control experiment: permute the camera labels among each batch's images (no image keeps its "
                "own camera), to show what the labels are worth"})


@dataclass
class ModelOptions:
    preset: str = field(default="tiny", metadata={"choices": ["tiny", "paper"], "help": "GAN size preset"})
    overrides: dict[str, Any] = field(default_factory=dict,
                                      metadata={"help": "GANConfig fields to change, e.g. {d_mode: coarse}"})

    def build(self):
        """-> GANConfig (preset + overrides), each override type-checked against GANConfig."""
        from avatar3d.gan.config import GANConfig

        hints = typing.get_type_hints(GANConfig)
        names = [f.name for f in dataclasses.fields(GANConfig)]
        values = {}
        for key, value in self.overrides.items():
            if key not in hints:
                close = closest(key, names)
                hint = f"; did you mean 'model.overrides.{close}'?" if close else ""
                raise ConfigError(f"unknown option 'model.overrides.{key}'{hint}")
            values[key] = coerce(value, hints[key], f"model.overrides.{key}")
        try:
            return GANConfig.preset(self.preset, **values)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None


@dataclass
class ScalingOptions:
    num_workers: int = field(default=1, metadata={"min": 1, "help": "Ray Train workers (one per GPU)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, NCCL; CPU workers use gloo"})
    cpus_per_worker: float = field(default=1.0, metadata={"min": 0.1})
    strategy: str = field(default="deepspeed", metadata={"choices": ["deepspeed", "plain"],
                                                         "help": "DeepSpeed engines, or torch + manual all-reduce"})
    zero_stage: int = field(default=0, metadata={"choices": [0, 1, 2], "help": "DeepSpeed ZeRO stage"})
    precision: str = field(default="fp32", metadata={"choices": ["fp32", "bf16"],
                                                     "help": "bf16 autocast of the forward passes (GPU)"})


@dataclass
class TrainGANConfig:
    run_name: str = field(default="gan-tiny", metadata={"help": "same name again = resume that run"})
    output_dir: str = field(default="outputs/gan", metadata={"help": "Ray Train storage + snapshots"})
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    scaling: ScalingOptions = field(default_factory=ScalingOptions)
    tracking: TrackingOptions = field(default_factory=lambda: TrackingOptions(experiment="avatar3d-gan",
                                                                        register_name="avatar3d-gan"))
    batch_size: int = field(default=4, metadata={"min": 1, "help": "global batch over all workers"})
    total_kimg: float = field(default=0.1, metadata={"min": 0.0, "help": "training length, thousands of images"})
    kimg_per_tick: float = field(default=0.02, metadata={"min": 0.0001})
    snapshot_ticks: int = field(default=1, metadata={"min": 1, "help": "checkpoint + snapshot every N ticks"})
    image_ticks: int = field(default=1, metadata={"min": 1, "help": "sample grids every N ticks"})
    fid_ticks: int = field(default=0, metadata={"min": 0, "help": "FID (overall + per view) every N ticks; 0 = off"})
    fid: FIDOptions = field(default_factory=FIDOptions, metadata={"help": "training-time FID protocol"})
    truth_ticks: int = field(default=0, metadata={
        "min": 0, "help": "truth metrics (silhouette agreement, view consistency, KID per view) every N ticks; "
                          "needs a dataset of the procedural painter; 0 = off"})
    truth: TruthOptions = field(default_factory=TruthOptions, metadata={"help": "training-time truth metrics"})
    seed: int = seed_field(help="seed of every random stream (latents, cameras, batches, ray jitter)")
    resume: str = field(default="", metadata={"help": "resume state folder (a checkpoint of a run) to continue", "path": INPUT})
    transfer: str = field(default="", metadata={"help": "snapshot .safetensors whose G weights start a new run", "path": INPUT})
    max_failures: int = field(default=0, metadata={"min": -1, "help": "worker-group restarts (-1 = unlimited)"})

    def validate(self) -> None:
        if self.batch_size % self.scaling.num_workers:
            raise ConfigError(f"batch_size: {self.batch_size} must be divisible by scaling.num_workers="
                              f"{self.scaling.num_workers} (each worker takes an equal share)")
        if self.resume and self.transfer:
            raise ConfigError("resume and transfer exclude each other: resume continues a run, transfer starts one")
        check_name(self.run_name, "run_name")
        self.model.build()  # type-check the GAN overrides now, not on a worker
