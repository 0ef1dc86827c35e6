"""Options of ``avatar3d build-prior-pairs`` and ``avatar3d train-prior`` (jobs/configs/prior_*.yaml).

One config serves every scale: the tiny CPU run and a GPU run differ only in
values. The scaling options are train-gan's (same Ray Train + DeepSpeed system).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from avatar3d.config import INPUT, MODEL, ConfigError, check_name, seed_field
from avatar3d.tracking.options import TrackingOptions
from avatar3d.training.config import ScalingOptions


PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")  # what the denoiser predicts
SAMPLERS = ("ddim", "unipc")  # inference schedulers


@dataclass
class BuildPairsConfig:
    output_dir: str = field(default="outputs/prior_pairs", metadata={"help": "folder for the Parquet pairs"})
    snapshot: str = field(default="", metadata={"help": "generator snapshot (.safetensors) from train-gan", "path": INPUT})
    image_encoder: str = field(default="tiny", metadata={
        "help": "CLIP vision model: hub id, local folder, or 'tiny' (small random weights, offline tests)", "path": MODEL})
    encoder_seed: int = seed_field(help="weight seed of the tiny encoder")
    num_pairs: int = field(default=256, metadata={"min": 1, "help": "how many (w, embedding, image) rows"})
    seed: int = seed_field(help="row i depends only on (seed, i)")
    truncation_psi: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0,
                                                         "help": "1 = the whole W distribution"})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "rows per actor call"})
    min_actors: int = field(default=1, metadata={"min": 1})
    max_actors: int = field(default=2, metadata={"min": 1})
    cpus_per_actor: float = field(default=1.0, metadata={"min": 0.1})
    gpus_per_actor: float = field(default=0.0, metadata={"min": 0.0})
    rows_per_file: int = field(default=4096, metadata={"min": 1})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing pairs folder"})

    def validate(self) -> None:
        if not self.snapshot:
            raise ConfigError("snapshot: required; pass snapshot=<run>/network-snapshot-final.safetensors "
                              "(written by avatar3d train-gan)")
        if self.max_actors < self.min_actors:
            raise ConfigError(f"max_actors: {self.max_actors} is below min_actors={self.min_actors}")


@dataclass
class PriorModelOptions:
    size: str = field(default="tiny", metadata={"choices": ["tiny", "paper"], "help": "transformer size preset"})
    prediction_type: str = field(default="sample", metadata={"choices": list(PREDICTION_TYPES),
                                                             "help": "denoiser target (unCLIP: sample)"})
    num_train_timesteps: int = field(default=1000, metadata={"min": 2})
    cond_drop_prob: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0,
                                                         "help": "classifier-free guidance: P(null condition)"})


@dataclass
class SamplingOptions:
    """Defaults stored with the prior; image-to-avatar can override them."""

    sampler: str = field(default="ddim", metadata={"choices": list(SAMPLERS)})
    num_inference_steps: int = field(default=25, metadata={"min": 1})
    guidance_scale: float = field(default=3.0, metadata={"min": 0.0})


@dataclass
class TrainPriorConfig:
    run_name: str = field(default="prior-tiny", metadata={"help": "same name again = resume that run"})
    output_dir: str = field(default="outputs/prior", metadata={"help": "Ray Train storage + the prior folder"})
    pairs: str = field(default="", metadata={"help": "pairs folder written by avatar3d build-prior-pairs", "path": INPUT})
    model: PriorModelOptions = field(default_factory=PriorModelOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    scaling: ScalingOptions = field(default_factory=ScalingOptions)
    tracking: TrackingOptions = field(default_factory=lambda: TrackingOptions(experiment="avatar3d-prior",
                                                                        register_name="avatar3d-prior"))
    batch_size: int = field(default=64, metadata={"min": 1, "help": "global batch over all workers"})
    lr: float = field(default=3e-4, metadata={"min": 0.0})
    total_steps: int = field(default=2000, metadata={"min": 1})
    steps_per_tick: int = field(default=100, metadata={"min": 1, "help": "progress line + metrics every N steps"})
    checkpoint_ticks: int = field(default=5, metadata={"min": 1, "help": "checkpoint every N ticks"})
    seed: int = seed_field(help="seed of batches, noise and timesteps")
    resume: str = field(default="", metadata={"help": "checkpoint folder of a train-prior run to continue", "path": INPUT})
    max_failures: int = field(default=0, metadata={"min": -1, "help": "worker-group restarts (-1 = unlimited)"})

    def validate(self) -> None:
        if not self.pairs:
            raise ConfigError("pairs: required; pass pairs=<folder written by avatar3d build-prior-pairs>")
        if self.batch_size % self.scaling.num_workers:
            raise ConfigError(f"batch_size: {self.batch_size} must be divisible by scaling.num_workers="
                              f"{self.scaling.num_workers} (each worker takes an equal share)")
        check_name(self.run_name, "run_name")


@dataclass
class AvatarOptions:
    """The avatar half of image-to-avatar and text-to-avatar: the prior (and generator), how w is sampled,
    what is rendered and exported. Each command's config adds its input and output options."""

    prior: str = field(default="", metadata={"help": "prior folder (<run>/prior) or models:/<name>/<version|@alias>", "path": INPUT})
    generator: str = field(default="", metadata={"help": "generator snapshot to use instead of the prior's own", "path": INPUT})
    tracking_uri: str = field(default="", metadata={"help": "MLflow store for a models:/ prior"})
    guidance_scale: Optional[float] = field(default=None, metadata={"min": 0.0,
                                                                    "help": "CFG scale (default: the prior's)"})
    steps: Optional[int] = field(default=None, metadata={"min": 1, "help": "sampling steps (default: the prior's)"})
    sampler: Optional[str] = field(default=None, metadata={"help": f"{' or '.join(SAMPLERS)} (default: the prior's)"})
    views: int = field(default=8, metadata={"min": 1, "max": 360, "help": "evenly spaced yaws over 360 degrees"})
    pitch: float = field(default=0.0, metadata={"help": "camera elevation of the views, degrees"})
    turntable_frames: int = field(default=36, metadata={"min": 0, "help": "GIF frames over 360 deg (0 = no GIF)"})
    truncation_psi: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0,
                                                         "help": "pull w toward the average w (1 = off)"})
    mesh_resolution: int = field(default=128, metadata={"min": 0, "max": 1024,
                                                        "help": "marching-cubes grid size (0 = no mesh)"})
    mesh_iso: Optional[float] = field(default=None, metadata={"help": "surface density level (default EG3D's 10)"})

    def validate_avatar(self) -> None:
        if not self.prior:
            raise ConfigError("prior: pass a prior folder written by train-prior or models:/<name>/<version>")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler: {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.mesh_resolution and self.mesh_resolution < 8:
            raise ConfigError(f"mesh_resolution: {self.mesh_resolution} is out of range; pass 8..1024 (0 = no mesh)")


@dataclass
class ImageToAvatarConfig(AvatarOptions):
    """Options of ``avatar3d image-to-avatar`` (and the chain's ``image_to_avatar`` stage)."""

    image: str = field(default="", metadata={"help": "input image (PNG/JPEG, at least 16x16)", "path": INPUT})
    output_dir: str = field(default="", metadata={"help": "views, turntable GIF, w.npy, mesh, avatar.json"})
    seed: int = seed_field(help="sampling seed; same seed, same avatar")
    overwrite: bool = field(default=False, metadata={"help": "replace the avatar an earlier run wrote in output_dir"})

    def validate(self) -> None:
        if not self.image:
            raise ConfigError("image: no input image given; pass the path of a PNG or JPEG")
        if not self.output_dir:
            raise ConfigError("output_dir: pass the folder the avatar is written to")
        self.validate_avatar()
