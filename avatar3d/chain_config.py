"""Options of ``avatar3d run-pipeline`` (jobs/configs/demo_tiny.yaml): data only, so ``--help`` lists them
without loading the stages; :mod:`avatar3d.chain` runs them."""
from __future__ import annotations

from dataclasses import dataclass, field

from avatar3d.config import CONFIG_DIR, INPUT, ConfigError, writable_dir

STAGES = ("guidance", "generate", "train_gan", "evaluate", "prior_pairs", "train_prior", "image_to_avatar",
          "text_to_avatar", "report")


@dataclass
class ChainConfig:
    output_dir: str = field(default="outputs/demo", metadata={"help": "everything goes under here"})
    stages: list[str] = field(default_factory=lambda: list(STAGES),
                              metadata={"choices": list(STAGES), "help": "stages to run, in pipeline order"})
    from_stage: str = field(default="", metadata={"help": "re-run this stage and all after it"})
    guidance_views: int = field(default=8, metadata={"min": 1})
    guidance_size: int = field(default=256, metadata={"min": 16})
    generate_config: str = field(default="jobs/configs/generate_tiny.yaml", metadata={"path": INPUT})
    generate_overrides: list[str] = field(default_factory=list)
    train_config: str = field(default="jobs/configs/train_gan_tiny.yaml", metadata={"path": INPUT})
    train_overrides: list[str] = field(default_factory=list)
    evaluate_config: str = field(default="jobs/configs/evaluate_tiny.yaml",
                                 metadata={"help": "EvaluateConfig YAML (model, data, output_dir are set here)",
                                           "path": INPUT})
    evaluate_overrides: list[str] = field(default_factory=list)
    prior_pairs_config: str = field(default="jobs/configs/prior_pairs_tiny.yaml", metadata={"path": INPUT})
    prior_pairs_overrides: list[str] = field(default_factory=list)
    prior_train_config: str = field(default="jobs/configs/prior_train_tiny.yaml", metadata={"path": INPUT})
    prior_train_overrides: list[str] = field(default_factory=list)
    image_to_avatar_overrides: list[str] = field(
        default_factory=list, metadata={"help": "ImageToAvatarConfig overrides, e.g. [mesh_resolution=64]"})
    text_prompt: str = field(default="a girl with long red hair, round glasses and no hat", metadata={
        "help": "the text_to_avatar stage's prompt (painted by the generate stage's painter, at its resolution)"})
    text_to_avatar_overrides: list[str] = field(
        default_factory=list, metadata={"help": "TextToAvatarConfig overrides, e.g. [style=anime, views=4]"})
    tracking_uri: str = field(default="", metadata={"help": "MLflow URI for every stage; empty = sqlite in output_dir"})
    config_dir: str = field(default="", metadata={
        "path": CONFIG_DIR, "help": "folder the relative input paths in the *_overrides lists are read from; "
                                    "set to the config file's folder (empty: the current folder)"})

    def validate(self) -> None:
        if "://" in self.output_dir:  # Path() would make a local folder named "s3:"
            raise ConfigError(f"output_dir={self.output_dir}: the chain writes its report, meshes and MLflow "
                              "store in one local (or shared) folder; pass a local path, or run the stages' own "
                              "commands (generate, train-gan, build-prior-pairs, train-prior) with s3:// paths")
        writable_dir(self.output_dir, "output_dir", create=False)  # empty, a file, read-only: refused now
        if self.from_stage and self.from_stage not in STAGES:
            raise ConfigError(f"from_stage: {self.from_stage!r} is not a stage; choose one of {', '.join(STAGES)}")
        order = [s for s in STAGES if s in self.stages]
        if order != list(self.stages):
            raise ConfigError(f"stages: {self.stages} must be in pipeline order ({', '.join(STAGES)})")
