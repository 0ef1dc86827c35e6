"""The whole pipeline as one job: stage after stage, restartable from any stage.

    guidance -> generate -> train_gan -> report

Each stage is the same library call its own subcommand makes, with its own
config file plus overrides, writing under ``<output_dir>/<stage>``. A stage
whose output is complete is skipped on a re-run (the stages themselves resume:
generation skips written rows, training continues its run name), and
``from_stage`` forces everything from that stage on to run again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from avatar3d.config import ConfigError, dump_config, load_config

STAGES = ("guidance", "generate", "train_gan", "report")


@dataclass
class ChainConfig:
    output_dir: str = field(default="outputs/demo", metadata={"help": "everything goes under here"})
    stages: list[str] = field(default_factory=lambda: list(STAGES),
                              metadata={"choices": list(STAGES), "help": "stages to run, in pipeline order"})
    from_stage: str = field(default="", metadata={"help": "re-run this stage and all after it"})
    guidance_views: int = field(default=8, metadata={"min": 1})
    guidance_size: int = field(default=256, metadata={"min": 16})
    generate_config: str = "jobs/configs/generate_tiny.yaml"
    generate_overrides: list[str] = field(default_factory=list)
    train_config: str = "jobs/configs/train_gan_tiny.yaml"
    train_overrides: list[str] = field(default_factory=list)
    tracking_uri: str = field(default="", metadata={"help": "MLflow URI for every stage; empty = sqlite in output_dir"})

    def validate(self) -> None:
        if self.from_stage and self.from_stage not in STAGES:
            raise ConfigError(f"from_stage: {self.from_stage!r} is not a stage; choose one of {', '.join(STAGES)}")
        order = [s for s in STAGES if s in self.stages]
        if order != list(self.stages):
            raise ConfigError(f"stages: {self.stages} must be in pipeline order ({', '.join(STAGES)})")


@dataclass
class ChainResult:
    output_dir: Path
    ran: list[str]
    skipped: list[str]
    seconds: dict[str, float]
    report: Path | None

    def summary(self) -> str:
        times = ", ".join(f"{s} {t:.0f}s" for s, t in self.seconds.items())
        lines = [f"ran: {', '.join(self.ran) or '-'}; skipped (already done): {', '.join(self.skipped) or '-'}",
                 f"time per stage: {times}"]
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def run_chain(cfg: ChainConfig) -> ChainResult:
    from avatar3d.datagen.job import GenerateConfig
    from avatar3d.tracking.mlflow_utils import default_tracking_uri
    from avatar3d.training.config import TrainGANConfig

    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "chain_config.yaml")
    tracking_uri = cfg.tracking_uri or default_tracking_uri(out)
    # Resolve every stage's config before running anything: a typo fails now, not an hour in.
    gen_cfg = load_config(GenerateConfig, cfg.generate_config, [
        f"output_dir={out / 'dataset'}", f"tracking.tracking_uri={tracking_uri}", *cfg.generate_overrides])
    train_cfg = load_config(TrainGANConfig, cfg.train_config, [
        f"data.path={out / 'dataset'}", f"output_dir={out / 'gan'}", f"tracking.tracking_uri={tracking_uri}",
        *cfg.train_overrides])
    forced = set(STAGES[STAGES.index(cfg.from_stage):]) if cfg.from_stage else set()
    state_file = out / "chain_state.json"
    done = set(json.loads(state_file.read_text())) if state_file.is_file() else set()

    ran, skipped, seconds, report = [], [], {}, None
    for stage in cfg.stages:
        if stage in done and stage not in forced:
            skipped.append(stage)
            continue
        print(f"== stage {stage} ==", flush=True)
        t0 = time.time()
        if stage == "guidance":
            from avatar3d.scene.guidance import write_guidance_views

            write_guidance_views(out / "guidance", views=cfg.guidance_views, size=cfg.guidance_size)
        elif stage == "generate":
            from avatar3d.datagen.job import run_generation

            print(run_generation(gen_cfg).summary(), flush=True)
        elif stage == "train_gan":
            from avatar3d.training.job import run_train_gan

            print(run_train_gan(train_cfg).summary(), flush=True)
        elif stage == "report":
            from avatar3d.report import write_report

            report = write_report(out, tracking_uri)
        seconds[stage] = time.time() - t0
        ran.append(stage)
        done.add(stage)
        state_file.write_text(json.dumps(sorted(done)))
    if report is None and (out / "report" / "index.html").is_file():
        report = out / "report" / "index.html"
    return ChainResult(output_dir=out, ran=ran, skipped=skipped, seconds=seconds, report=report)
