"""The whole pipeline as one job: stage after stage, restartable from any stage.

    guidance -> generate -> train_gan -> evaluate -> prior_pairs -> train_prior -> image_to_avatar
    -> text_to_avatar -> report

Each stage is the same library call its own subcommand makes (``run_generation``,
``run_train_gan``, ``run_evaluate``, ``run_build_pairs``, ``run_train_prior``,
``run_image_to_avatar``, ``write_report``), with the stage's typed config built
from its own config file plus overrides, writing under ``<output_dir>/<stage>``.
Every stage config is resolved before the first stage runs, so a typo fails at once. A stage
whose output is complete is skipped on a re-run (the stages themselves resume:
generation skips written rows, training continues its run name), and
``from_stage`` forces everything from that stage on to run again.
"""
from __future__ import annotations

import logging
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from avatar3d.chain_config import STAGES, ChainConfig
from avatar3d.config import ConfigError, dump_config, load_config, writable_dir
from avatar3d.datagen.dataset import read_table
from avatar3d.datagen.config import GenerateConfig
from avatar3d.datagen.job import run_generation
from avatar3d.evaluation.stage import EvaluateConfig, run_evaluate
from avatar3d.evaluation.truth import has_truth, heldout_identities, render_truth, truth_specs
from avatar3d.prior.avatar import run_image_to_avatar, view_yaws
from avatar3d.prior.config import BuildPairsConfig, ImageToAvatarConfig, TrainPriorConfig
from avatar3d.prior.job import run_train_prior
from avatar3d.prior.pairs import run_build_pairs
from avatar3d.prior.text import run_text_to_avatar
from avatar3d.prior.text_config import TextToAvatarConfig
from avatar3d.report import write_report
from avatar3d.atomic import atomic_write
from avatar3d.scene.guidance import write_guidance_views
from avatar3d.tracking.tracker import default_tracking_uri
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.job import FINAL_SNAPSHOT, run_train_gan

log = logging.getLogger(__name__)

STATE_FILE = "chain_state.json"
STATE_FORMAT = "avatar3d.chain-state/1"

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


@dataclass
class StageConfigs:
    """Every stage's typed config, resolved before anything runs."""

    generate: GenerateConfig
    train: TrainGANConfig
    evaluate: EvaluateConfig
    pairs: BuildPairsConfig
    prior: TrainPriorConfig
    avatar: ImageToAvatarConfig
    text: TextToAvatarConfig


def _stage(cls, path: str | None, wiring: list[str], overrides: list[str], field: str, base_dir: str = ""):
    """One stage's config: its file, the chain's wiring (absolute paths), the user's overrides (relative input
    paths read from ``base_dir``, the chain config's folder); an error names the chain's option it came from
    (``train_overrides: unknown option ...``)."""
    if path and not Path(path).is_file():
        raise ConfigError(f"{field.replace('_overrides', '_config')}: config file not found: {path} (relative "
                          "paths in the chain's config file are read from that file's folder)")
    try:
        return load_config(cls, path or None, [*wiring, *overrides], base_dir=base_dir or None)
    except ConfigError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def stage_configs(cfg: ChainConfig, out: Path, tracking_uri: str) -> StageConfigs:
    """The stages' configs with the chain's wiring (each stage reads what the one before wrote)."""
    dataset, track = out / "dataset", f"tracking.tracking_uri={tracking_uri}"
    gen = _stage(GenerateConfig, cfg.generate_config, [f"output_dir={dataset}", track], cfg.generate_overrides,
                 "generate_overrides", cfg.config_dir)
    train = _stage(TrainGANConfig, cfg.train_config, [f"data.path={dataset}", f"output_dir={out / 'gan'}", track],
                   cfg.train_overrides, "train_overrides", cfg.config_dir)
    snapshot = out / "gan" / train.run_name / FINAL_SNAPSHOT
    evaluate = _stage(EvaluateConfig, cfg.evaluate_config, [f"model={snapshot}", f"data={dataset}",
                                                            f"output_dir={out / 'evaluate'}"],
                      cfg.evaluate_overrides, "evaluate_overrides", cfg.config_dir)
    # The chain's state decides whether the pairs stage runs; when it does, it rebuilds the chain's own pairs.
    pairs = _stage(BuildPairsConfig, cfg.prior_pairs_config, [f"output_dir={out / 'prior_pairs'}", f"snapshot={snapshot}",
                                                              "overwrite=true"],
                   cfg.prior_pairs_overrides, "prior_pairs_overrides", cfg.config_dir)
    prior = _stage(TrainPriorConfig, cfg.prior_train_config, [f"pairs={out / 'prior_pairs'}",
                                                              f"output_dir={out / 'prior'}", track],
                   cfg.prior_train_overrides, "prior_train_overrides", cfg.config_dir)
    avatar = _stage(ImageToAvatarConfig, None, [f"image={out / 'image_to_avatar' / 'input.png'}",
                                                f"output_dir={out / 'image_to_avatar'}",
                                                f"prior={out / 'prior' / prior.run_name / 'prior'}", "overwrite=true"],
                    cfg.image_to_avatar_overrides, "image_to_avatar_overrides", cfg.config_dir)
    # Text to avatar paints with the generate stage's painter, at the size the GAN learned from.
    if any(o.startswith("pipeline.") for o in cfg.text_to_avatar_overrides):
        raise ConfigError("text_to_avatar_overrides: the painter (pipeline.*) is the generate stage's; set it in "
                          "generate_config / generate_overrides")
    text = _stage(TextToAvatarConfig, None, [f"prompt={json.dumps(cfg.text_prompt)}",
                                             f"output_dir={out / 'text_to_avatar'}",
                                             f"prior={out / 'prior' / prior.run_name / 'prior'}",
                                             f"resolution={gen.resolution}", "overwrite=true"],
                  cfg.text_to_avatar_overrides, "text_to_avatar_overrides", cfg.config_dir)
    text = replace(text, pipeline=gen.pipeline).validate()
    return StageConfigs(generate=gen, train=train, evaluate=evaluate, pairs=pairs, prior=prior, avatar=avatar,
                        text=text)


def run_chain(cfg: ChainConfig) -> ChainResult:
    out = Path(cfg.output_dir).resolve()
    tracking_uri = cfg.tracking_uri or default_tracking_uri(out)
    # Resolve every stage's config before running (or creating) anything: a typo fails now, not an hour in.
    stages = stage_configs(cfg, out, tracking_uri)
    writable_dir(out, "output_dir")
    dump_config(cfg, out / "chain_config.yaml")
    forced = set(STAGES[STAGES.index(cfg.from_stage):]) if cfg.from_stage else set()
    done = read_state(out)

    ran, skipped, seconds, report = [], [], {}, None
    for stage in cfg.stages:
        if stage in done and stage not in forced:
            skipped.append(stage)
            continue
        log.info(f"== stage {stage} ==")
        t0 = time.time()
        if stage == "guidance":
            write_guidance_views(out / "guidance", views=cfg.guidance_views, size=cfg.guidance_size)
        elif stage == "generate":
            log.info(run_generation(stages.generate).summary())
        elif stage == "train_gan":
            log.info(run_train_gan(stages.train).summary())
        elif stage == "evaluate":
            log.info(run_evaluate(stages.evaluate).summary())
        elif stage == "prior_pairs":
            log.info(run_build_pairs(stages.pairs).summary())
        elif stage == "train_prior":
            log.info(run_train_prior(stages.prior).summary())
        elif stage == "image_to_avatar":
            write_input_image(out / "dataset", Path(stages.avatar.image), stages.avatar)
            result = run_image_to_avatar(stages.avatar)
            log.info(f"avatar: {len(result.files)} files in {result.output_dir}")
        elif stage == "text_to_avatar":
            log.info(run_text_to_avatar(stages.text).summary())
        elif stage == "report":
            report = write_report(out, tracking_uri)
        seconds[stage] = time.time() - t0
        ran.append(stage)
        done.add(stage)
        write_state(out, done)
    if report is None and (out / "report" / "index.html").is_file():
        report = out / "report" / "index.html"
    return ChainResult(output_dir=out, ran=ran, skipped=skipped, seconds=seconds, report=report)


def read_state(out: Path) -> set[str]:
    """The stages a previous run finished (``chain_state.json``, versioned); empty when there is none."""
    path = out / STATE_FILE
    if not path.is_file():
        return set()
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"output_dir: {path} is not valid JSON; remove it to run every stage again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"output_dir: {path} has format {found!r}, this avatar3d reads {STATE_FORMAT!r}; "
                          "remove it to run every stage again")
    return {s for s in state["done"] if s in STAGES}


def write_state(out: Path, done: set[str]) -> Path:
    return atomic_write(out / STATE_FILE, json.dumps({"format": STATE_FORMAT, "done": sorted(done)}, indent=2))


def write_input_image(dataset: Path, target: Path, avatar: ImageToAvatarConfig | None = None) -> Path:
    """The image-to-avatar stage's input, as a PNG file.

    In the procedural world: the front view of a held-out identity (one no dataset row shows), with its
    truth views at the stage's yaws beside it (``truth_views.png``) for the report. Otherwise the first
    front view of the generated dataset.
    """
    if has_truth(str(dataset)):
        identity = heldout_identities(truth_specs(str(dataset)), 1)[0]
        size = int(read_table(dataset, columns=["width"]).column("width")[0].as_py())
        front, _ = render_truth([identity], [0.0], [0.0], size)
        target.parent.mkdir(parents=True, exist_ok=True)
        if avatar is not None:
            yaws = view_yaws(avatar.views)
            views, _ = render_truth([identity] * len(yaws), yaws, [avatar.pitch] * len(yaws), size)
            Image.fromarray(np.concatenate(list(views), axis=1)).save(target.parent / "truth_views.png")
            atomic_write(target.parent / "truth_identity.json", identity.to_json())
        Image.fromarray(front[0]).save(target)
        return target
    rows = read_table(dataset, columns=["image_png", "view"]).to_pylist()
    if not rows:
        raise ValueError(f"image_to_avatar: the dataset at {dataset} has no rows; run the generate stage first")
    first = next((r for r in rows if r["view"] == "front"), rows[0])
    return atomic_write(target, first["image_png"])
