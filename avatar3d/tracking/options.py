"""The tracking options every stage carries as ``<stage config>.tracking`` (data only; no MLflow import).

One class for generation, GAN training, prior training and LoRA training:
a stage's config holds ``TrackingOptions`` with its own defaults (experiment,
registry name), and :class:`avatar3d.tracking.tracker.Tracker` acts on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import re

from avatar3d.config import ConfigError, check_name

_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")


def check_alias(value: str, field: str) -> None:
    """MLflow's rule for aliases (letters, digits, _ and -, not a version-like ``v<digits>`` or ``latest``)."""
    if not _ALIAS.fullmatch(value) or re.fullmatch(r"[vV]\d+|latest", value):
        raise ConfigError(f"{field}={value!r}: use letters, digits, '_' or '-', starting with a letter (not "
                          "'latest' or v<number>), e.g. candidate")


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
    register_alias: str = field(default="candidate", metadata={
        "help": "alias the new version gets (models:/<name>@<alias>); promote one with "
                "MlflowClient().set_registered_model_alias(name, 'champion', version); empty = none"})

    def validate(self, prefix: str = "tracking") -> "TrackingOptions":
        if not self.experiment.strip():
            raise ConfigError(f"{prefix}.experiment is empty: pass an MLflow experiment name, or {prefix}.enabled=false")
        if self.register_name:
            check_name(self.register_name, f"{prefix}.register_name")
        if self.run_name:
            check_name(self.run_name, f"{prefix}.run_name")
        if self.register_alias:
            check_alias(self.register_alias, f"{prefix}.register_alias")
        return self

    def registry_name(self, default: str) -> str | None:
        """The name to register under, or None when this run registers nothing."""
        if not (self.enabled and self.register):
            return None
        return self.register_name or default
