"""The tracking options every stage carries as ``<stage config>.tracking`` (data only; no MLflow import).

One class for generation, GAN training, prior training and LoRA training:
a stage's config holds ``TrackingOptions`` with its own defaults (experiment,
registry name), and :class:`avatar3d.tracking.tracker.Tracker` acts on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from avatar3d.config import ConfigError, check_name


@dataclass
class TrackingOptions:
    """Where a stage logs (MLflow) and what it registers; the stage's own code never sees MLflow."""

    enabled: bool = field(default=True, metadata={"help": "log the config, metrics and files to MLflow; "
                                                          "false = no run, nothing registered"})
    tracking_uri: str = field(default="", metadata={
        "help": "MLflow URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db"})
    experiment: str = field(default="avatar3d", metadata={"help": "MLflow experiment (created if missing)"})
    run_name: str = field(default="", metadata={
        "help": "MLflow run name; empty = the stage's own (training: its run_name, so a resume logs on)"})
    register: bool = field(default=True, metadata={
        "help": "register the trained model in the MLflow model registry (training stages; generate has none)"})
    register_name: str = field(default="", metadata={
        "help": "registered model name; empty = the stage's default (avatar3d-gan, avatar3d-prior, avatar3d-lora-<token>)"})

    def validate(self, prefix: str = "tracking") -> "TrackingOptions":
        if not self.experiment.strip():
            raise ConfigError(f"{prefix}.experiment is empty: pass an MLflow experiment name, or {prefix}.enabled=false")
        if self.register_name:
            check_name(self.register_name, f"{prefix}.register_name")
        if self.run_name:
            check_name(self.run_name, f"{prefix}.run_name")
        return self

    def registry_name(self, default: str) -> str | None:
        """The name to register under, or None when this run registers nothing."""
        if not (self.enabled and self.register):
            return None
        return self.register_name or default
