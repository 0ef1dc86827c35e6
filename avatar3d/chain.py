"""The whole pipeline as one job: stage after stage, restartable from any stage.

    guidance -> generate -> train_gan -> evaluate -> prior_pairs -> train_prior -> image_to_avatar -> report

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

STAGES = ("guidance", "generate", "train_gan", "evaluate", "prior_pairs", "train_prior", "image_to_avatar",
          "report")


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
    fid_num_fakes: int = field(default=64, metadata={"min": 2, "help": "generated images for the evaluate stage's FID"})
    mesh_resolution: int = field(default=64, metadata={"min": 16})
    mesh_iso: float = field(default=10.0, metadata={"help": "surface level of raw density (EG3D: 10)"})
    prior_pairs_config: str = "jobs/configs/prior_pairs_tiny.yaml"
    prior_pairs_overrides: list[str] = field(default_factory=list)
    prior_train_config: str = "jobs/configs/prior_train_tiny.yaml"
    prior_train_overrides: list[str] = field(default_factory=list)
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
    from avatar3d.prior.config import BuildPairsConfig, TrainPriorConfig
    from avatar3d.tracking.mlflow_utils import default_tracking_uri
    from avatar3d.training.config import TrainGANConfig
    from avatar3d.training.job import FINAL_SNAPSHOT

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
    snapshot = out / "gan" / train_cfg.run_name / FINAL_SNAPSHOT
    pairs_cfg = load_config(BuildPairsConfig, cfg.prior_pairs_config, [
        f"output_dir={out / 'prior_pairs'}", f"snapshot={snapshot}", *cfg.prior_pairs_overrides])
    prior_cfg = load_config(TrainPriorConfig, cfg.prior_train_config, [
        f"pairs={out / 'prior_pairs'}", f"output_dir={out / 'prior'}", f"tracking.tracking_uri={tracking_uri}",
        *cfg.prior_train_overrides])
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
        elif stage == "evaluate":
            _evaluate(cfg, out, snapshot, tracking_uri)
        elif stage == "prior_pairs":
            from avatar3d.prior.pairs import run_build_pairs

            print(run_build_pairs(pairs_cfg).summary(), flush=True)
        elif stage == "train_prior":
            from avatar3d.prior.job import run_train_prior

            print(run_train_prior(prior_cfg).summary(), flush=True)
        elif stage == "image_to_avatar":
            _image_to_avatar(cfg, out, out / "prior" / prior_cfg.run_name / "prior")
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


def _cli(argv: list[str]) -> None:
    """Run an ``avatar3d`` subcommand as a stage: the same code path a user's command takes."""
    from avatar3d.cli import main

    print("$ avatar3d " + " ".join(argv), flush=True)
    if main(argv) != 0:
        raise RuntimeError(f"stage command failed: avatar3d {' '.join(argv)}")


def _evaluate(cfg: ChainConfig, out: Path, snapshot: Path, tracking_uri: str) -> None:
    """FID overall and per view, a latent walk, a turntable and a mesh of the trained generator."""
    ev = out / "evaluate"
    model = ["--model", str(snapshot)]
    _cli(["fid", *model, "--data", str(out / "dataset"), "--num-fakes", str(cfg.fid_num_fakes),
          "--frechet", "eigh", "--out", str(ev / "fid.json")])
    _cli(["walk", *model, "--seeds", "0,1,2", "--frames-per-seed", "12", "--out", str(ev / "walk"),
          "--formats", "gif"])
    _cli(["turntable", *model, "--seed", "0", "--frames", "24", "--out", str(ev / "turntable"), "--formats", "gif"])
    try:
        _cli(["export-mesh", *model, "--seed", "0", "--resolution", str(cfg.mesh_resolution),
              "--iso", str(cfg.mesh_iso), "--out", str(ev / "mesh" / "avatar.glb")])
    except RuntimeError as exc:  # a young generator may have no surface at this level yet
        print(f"note: {exc}; the report shows no mesh (lower mesh_iso or train longer)", flush=True)


def _image_to_avatar(cfg: ChainConfig, out: Path, prior_dir: Path) -> None:
    """The prior's use: a dataset image in, a 3D avatar out (views, turntable, mesh)."""
    import io

    from PIL import Image

    from avatar3d.datagen.shards import read_dataset

    row = read_dataset(out / "dataset", columns=["image_png", "view"]).to_pylist()
    first = next((r for r in row if r["view"] == "front"), row[0])
    src = out / "image_to_avatar" / "input.png"
    src.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(first["image_png"])).save(src)
    _cli(["image-to-avatar", str(src), "--out", str(out / "image_to_avatar"), "--prior", str(prior_dir),
          "--mesh-resolution", str(cfg.mesh_resolution), "--mesh-iso", str(cfg.mesh_iso)])
