"""``avatar3d train-gan``: the driver side of GAN training on Ray Train.

1. validate the options and the dataset (before any worker starts),
2. open (or re-open) the MLflow run of this run name and log the config,
3. read the Parquet shards with Ray Data, decode and resize their PNGs in
   Ray Data's CPU tasks (uint8 to the workers), and start a ``TorchTrainer``
   (gloo on CPU, NCCL on GPUs; DeepSpeed or plain engines inside); the
   workers get the typed config itself (as data, rebuilt by the same
   ``from_dict``), not a hand-made dict,
4. keep the final inference snapshot beside the run and register it.

Running the same ``run_name`` again resumes it: Ray Train hands the workers
the latest checkpoint of ``<output_dir>/ray/<run_name>`` and MLflow logging
continues in the same run. ``output_dir`` and ``data.path`` may be object-store
URIs (``s3://bucket/gan``): Ray uploads the checkpoints there, and the run's
``config.yaml`` and final snapshot are one PUT each (no lock, no rename).
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from avatar3d.atomic import atomic_path
from avatar3d.config import ConfigError, to_dict, writable_dir
from avatar3d.datagen.dataset import TRAIN_COLUMNS, check_output_location, is_remote, open_dataset
from avatar3d.datagen.shards import upload
from avatar3d.evaluation.truth import has_truth
from avatar3d.gan.snapshot import read_snapshot_metadata
from avatar3d.runtime import apply_local_defaults
from avatar3d.tracking.tracker import Tracker
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.data import decode_images
from avatar3d.training.loop import SNAPSHOT_FILE, STATE_TREE, config_changes, read_resume_state, resume_changes
from avatar3d.training.ray_fit import (RowTransform, WorkerContext, check_checkpoint_to_load, fit_with_ray,
                                       run_folder, torch_threads_from_env, worker_config)
from avatar3d.training.ray_worker import train_func
from avatar3d.training.registry import register_generator

log = logging.getLogger(__name__)

FINAL_SNAPSHOT = "network-snapshot-final.safetensors"


@dataclass
class TrainResult:
    run_dir: Path
    snapshot: Path | None
    kimg: float
    metrics: dict
    mlflow_run_id: str | None
    registered_version: str | None

    def summary(self) -> str:
        lines = [f"trained to {self.kimg:.3f} kimg; run folder {self.run_dir}"]
        if self.snapshot:
            lines.append(f"snapshot: {self.snapshot}")
        if self.registered_version:
            lines.append(f"registered: models:/{self.registered_version}")
        return "\n".join(lines)


def run_train_gan(cfg: TrainGANConfig, after_tick: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train the GAN as ``cfg`` says. ``after_tick(tick, rank)`` runs on every worker after each tick
    (tests inject faults there; it is not a user option)."""
    apply_local_defaults()
    # Validate everything the workers will need, here.
    remote = check_output_location(cfg.output_dir, cfg.tracking)  # Ray storage, config, snapshot go there
    dataset = open_dataset(cfg.data.path, columns=TRAIN_COLUMNS, field="data.path")
    gan_cfg = cfg.model.build()
    if cfg.truth_ticks and not has_truth(cfg.data.path):
        raise ConfigError(f"truth_ticks={cfg.truth_ticks}: data.path={cfg.data.path} has no truth columns; the truth "
                          "metrics need a dataset of the procedural painter (pipeline.preset=procedural), or pass truth_ticks=0")
    if cfg.transfer:
        saved = read_snapshot_metadata(cfg.transfer)["gan_config"]
        try:  # the workers check again as they load; this says it before Ray starts
            config_changes(saved, gan_cfg, "transfer")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.resume:
        if not (Path(cfg.resume) / STATE_TREE).is_dir():
            raise ConfigError(f"resume: {cfg.resume} is not a train-gan checkpoint folder (no {STATE_TREE}/ inside)")
        try:  # the workers check again as they load; this says it before Ray starts
            resume_changes(json.loads(read_resume_state(Path(cfg.resume))["gan_config"]), gan_cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    per_worker = cfg.batch_size // cfg.scaling.num_workers
    rows_per_worker = dataset.num_rows // cfg.scaling.num_workers
    if rows_per_worker < per_worker:
        raise ConfigError(f"batch_size: each of {cfg.scaling.num_workers} worker(s) would get {rows_per_worker} "
                          f"rows, fewer than its batch of {per_worker}; lower batch_size or add data")
    for name in ("lr_g", "lr_d"):
        if getattr(gan_cfg, name) == 0:
            log.warning(f"model.overrides.{name}=0: that network will not change (a control run)")
    if cfg.scaling.use_gpu is False and cfg.scaling.precision == "bf16":
        log.warning("precision=bf16 on CPU workers runs bf16 autocast on the CPU (slow); GPUs are its target")
    output_dir = cfg.output_dir.rstrip("/") if remote else Path(cfg.output_dir).resolve()
    run_dir = f"{output_dir}/{cfg.run_name}" if remote else output_dir / cfg.run_name
    check_checkpoint_to_load(output_dir, cfg.run_name, cfg.resume, cfg.scaling, ("G", "D"),
                             restart=f"start a new run with transfer={Path(cfg.resume) / SNAPSHOT_FILE}")
    tracker = Tracker(cfg.tracking, output_dir, cfg.run_name, stage="gan", resume=True).check()
    if not remote:
        writable_dir(cfg.output_dir, "output_dir")  # the raw value: an empty one is refused, not resolved to .
    if not is_remote(cfg.data.path):  # workers may start elsewhere: hand them absolute paths
        cfg = replace(cfg, data=replace(cfg.data, path=str(Path(cfg.data.path).resolve())))
    for name in ("transfer", "resume"):
        if getattr(cfg, name):
            cfg = replace(cfg, **{name: str(Path(getattr(cfg, name)).resolve())})
    log.info(f"dataset: {dataset.summary()}")

    # One writer per run folder (an object store has no lock: one job per prefix); one MLflow run per run
    # name (a resumed job logs on in the same run).
    with run_folder(run_dir, remote, cfg) as local_tmp, tracker:
        tracker.log_config({"train": to_dict(cfg), "gan": gan_cfg.to_dict()})
        t0 = time.time()
        context = WorkerContext(rows_per_worker=rows_per_worker, tracking_uri=tracker.uri or "",
                                run_id=tracker.run_id or "", torch_threads=torch_threads_from_env())
        # PNG decode + resize run in Ray Data's CPU tasks; the workers get uint8 pixels and draw the flips.
        decode = RowTransform(functools.partial(decode_images, resolution=gan_cfg.output_resolution))
        result = fit_with_ray(train_func, worker_config(cfg, context, after_tick=after_tick), cfg.scaling,
                              cfg.run_name, output_dir, cfg.max_failures, dataset.files,
                              columns=["image_png", "camera"], filesystem=dataset.filesystem, transform=decode)
        # On an object store the snapshot is kept in a local temporary (for MLflow) and uploaded beside the run.
        snapshot = _keep_final_snapshot(result, local_tmp if remote else run_dir)
        tracker.log_metrics({"train_wall_s": time.time() - t0})

        # The inference snapshot: kept beside the run, logged, registered.
        version = None
        if snapshot is not None:
            tracker.log_file(snapshot, artifact_path="snapshot")
            version = tracker.register(register_generator, snapshot, default="avatar3d-gan")
            if remote:
                snapshot = upload(snapshot, f"{run_dir}/{FINAL_SNAPSHOT}")
        metrics = dict(result.metrics or {})
        return TrainResult(run_dir=run_dir, snapshot=snapshot, kimg=float(metrics.get("kimg", 0.0)),
                           metrics=metrics, mlflow_run_id=tracker.run_id, registered_version=version)


def _keep_final_snapshot(result, run_dir: Path) -> Path | None:
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as folder:
        src = Path(folder) / SNAPSHOT_FILE
        if not src.is_file():
            return None
        dst = run_dir / FINAL_SNAPSHOT
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return dst
