"""``avatar3d train-gan``: the driver side of GAN training on Ray Train.

1. validate the options and the dataset (before any worker starts),
2. open (or re-open) the MLflow run of this run name and log the config,
3. read the Parquet shards with Ray Data and start a ``TorchTrainer``
   (gloo on CPU, NCCL on GPUs; DeepSpeed or plain engines inside),
4. keep the final inference snapshot beside the run and register it.

Running the same ``run_name`` again resumes it: Ray Train hands the workers
the latest checkpoint of ``<output_dir>/ray/<run_name>`` and MLflow logging
continues in the same run.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from avatar3d.config import ConfigError, dump_config, to_dict, writable_dir
from avatar3d.training.config import TrainGANConfig

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


def run_train_gan(cfg: TrainGANConfig) -> TrainResult:
    from avatar3d.runtime import apply_local_defaults
    from avatar3d.training.checkpoint import read_snapshot_metadata
    from avatar3d.training.data import check_dataset
    from avatar3d.training.loop import STATE_TREE

    apply_local_defaults()
    # Validate everything the workers will need, here.
    info = check_dataset(cfg.data.path)
    gan_cfg = cfg.model.build()
    if cfg.transfer:
        read_snapshot_metadata(cfg.transfer)
    if cfg.resume and not (Path(cfg.resume) / STATE_TREE).is_dir():
        raise ConfigError(f"resume: {cfg.resume} is not a train-gan checkpoint folder (no {STATE_TREE}/ inside)")
    per_worker = cfg.batch_size // cfg.scaling.num_workers
    rows_per_worker = info.num_rows // cfg.scaling.num_workers
    if rows_per_worker < per_worker:
        raise ConfigError(f"batch_size: each of {cfg.scaling.num_workers} worker(s) would get {rows_per_worker} "
                          f"rows, fewer than its batch of {per_worker}; lower batch_size or add data")
    if cfg.scaling.use_gpu is False and cfg.scaling.precision == "bf16":
        print("note: precision=bf16 on CPU workers runs bf16 autocast on the CPU (slow); GPUs are its target")
    output_dir = Path(cfg.output_dir).resolve()
    run_dir = output_dir / cfg.run_name
    writable_dir(output_dir, "output_dir")
    dump_config(cfg, run_dir / "config.yaml")
    print(f"dataset: {info.summary()}")

    from avatar3d.tracking.mlflow_utils import default_tracking_uri, log_run_config, resume_or_start_run

    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri(output_dir)
    with resume_or_start_run(tracking_uri, cfg.tracking.experiment, cfg.run_name) as run:
        log_run_config(run, {"train": to_dict(cfg), "gan": gan_cfg.to_dict()})
        t0 = time.time()
        result = _fit(cfg, gan_cfg, info, rows_per_worker, tracking_uri, run.info.run_id, output_dir)
        snapshot = _keep_final_snapshot(result, run_dir)
        import mlflow

        mlflow.log_metric("train_wall_s", time.time() - t0)
        version = None
        if snapshot is not None:
            mlflow.log_artifact(str(snapshot), artifact_path="snapshot")
            if cfg.tracking.register_name:
                from avatar3d.tracking.registry import register_generator

                version = register_generator(snapshot, cfg.tracking.register_name)
        metrics = dict(result.metrics or {})
        return TrainResult(run_dir=run_dir, snapshot=snapshot, kimg=float(metrics.get("kimg", 0.0)),
                           metrics=metrics, mlflow_run_id=run.info.run_id, registered_version=version)


def _fit(cfg: TrainGANConfig, gan_cfg, info, rows_per_worker: int, tracking_uri: str, run_id: str,
         output_dir: Path):
    from avatar3d.training.ray_fit import fit_with_ray
    from avatar3d.training.ray_worker import train_func

    loop = {
        "total_kimg": cfg.total_kimg, "kimg_per_tick": cfg.kimg_per_tick, "snapshot_ticks": cfg.snapshot_ticks,
        "image_ticks": cfg.image_ticks, "precision": cfg.scaling.precision, "eval_ticks": cfg.fid_ticks,
        "crash_after_ticks": cfg.crash_after_ticks, "crash_rank": cfg.crash_rank,
        "crash_marker": str(output_dir / cfg.run_name / ".crash-injected"),
    }
    train_config = {
        "gan_config": gan_cfg.to_dict(), "seed": cfg.seed, "batch_size": cfg.batch_size,
        "mirror": cfg.data.mirror, "strategy": cfg.scaling.strategy, "zero_stage": cfg.scaling.zero_stage,
        "rows_per_worker": rows_per_worker, "loop": loop, "resume": cfg.resume, "transfer": cfg.transfer,
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "tracking": {"tracking_uri": tracking_uri, "run_id": run_id},
        "fid": {"data_path": str(Path(cfg.data.path).resolve()), "num_fakes": cfg.fid_num_fakes},
    }
    return fit_with_ray(train_func, train_config, cfg.scaling, cfg.run_name, output_dir, cfg.max_failures,
                        info.files, columns=["image_png", "camera"])


def _keep_final_snapshot(result, run_dir: Path) -> Path | None:
    from avatar3d.training.loop import SNAPSHOT_FILE

    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as folder:
        src = Path(folder) / SNAPSHOT_FILE
        if not src.is_file():
            return None
        dst = run_dir / FINAL_SNAPSHOT
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return dst
