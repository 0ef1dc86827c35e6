"""Ray Train plumbing shared by every trainer (the GAN and the W-space prior).

The driver half: start (or join) Ray, read Parquet columns with Ray Data in a
deterministic order (optionally through a deterministic per-row transform in Ray
Data's CPU tasks: the GAN's PNG decode and resize), and run a ``TorchTrainer``
whose storage, failure and checkpoint settings follow one convention
(``<output_dir>/ray/<run_name>``; running the same run name again resumes). The worker half: turn a training
loop's reports into ``ray.train.report`` calls with checkpoints, and log rank
0's metrics, images and snapshots into the driver's MLflow run.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray
import ray.train
import ray.train.torch
import pyarrow.fs as pafs
import torch
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from avatar3d.config import dump_config, from_dict, to_dict
from avatar3d.datagen.dataset import is_remote, resolve_filesystem
from avatar3d.datagen.shards import upload
from avatar3d.lock import folder_lock
from avatar3d.runtime import init_local_ray
from avatar3d.tracking.tracker import RunLogger
from avatar3d.training.engines import check_resume_engines


@dataclass
class WorkerContext:
    """What the driver adds to a stage's typed config for its workers (nothing a user sets)."""

    rows_per_worker: int
    tracking_uri: str = ""
    run_id: str = ""
    torch_threads: int | None = None


def worker_config(cfg, context: WorkerContext, **extra: Any) -> dict[str, Any]:
    """``train_loop_config`` for Ray Train: the typed config as plain data (round-tripped by
    :func:`unpack_worker_config` through the same ``from_dict`` the CLI uses) plus the driver's context."""
    return {"config": to_dict(cfg), "context": asdict(context), **extra}


def unpack_worker_config(config: dict[str, Any], cls):
    """-> (the stage's typed config, validated again, WorkerContext)."""
    return from_dict(cls, config["config"]), WorkerContext(**config["context"])


@dataclass(frozen=True)
class RowTransform:
    """A deterministic per-row function ``fn(batch) -> batch`` (dicts of NumPy columns) that Ray Data runs
    in CPU tasks (``map_batches``) upstream of the workers' shards, so their own CPUs never run it.

    It must not draw random numbers: with the dataset's order preserved, each shard then sees the same rows
    in the same order on every run, and a resume skips exactly the batches already seen. ``batch_size`` rows
    per call bounds a task's output block (32 decoded 512 px images: 25 MB); ``num_cpus`` per task.
    """

    fn: Callable[[dict[str, Any]], dict[str, Any]]
    batch_size: int = 32
    num_cpus: float = 1.0


def torch_threads_from_env() -> int | None:
    return int(os.environ.get("OMP_NUM_THREADS", "0")) or None


def fit_with_ray(train_func: Callable[[dict], None], train_config: dict[str, Any], scaling, run_name: str,
                 output_dir: Path, max_failures: int, files: Sequence[str | Path], columns: list[str],
                 filesystem=None, transform: RowTransform | None = None, nbytes: int | None = None):
    """Run ``train_func`` on ``scaling.num_workers`` workers over the Parquet ``files`` (on ``filesystem``,
    a pyarrow filesystem, for remote storage), their ``columns`` passed through ``transform`` when given
    (the workers' shards then hold its output columns); -> Ray's Result.

    ``nbytes``: the dataset's size in memory, when known. One that fits in a quarter of Ray's object store is
    read into it once before training (Ray Data's advice for a dataset iterated for many epochs): each epoch
    then streams the stored blocks instead of listing and reading the files again."""
    # An embedded local Ray needs CPUs beyond the workers' for Ray Data's read (and transform) tasks.
    needed = int(scaling.num_workers * scaling.cpus_per_worker + 0.999) + 2
    if transform is not None:
        needed += int(transform.num_cpus + 0.999)
    init_local_ray(num_cpus=max(os.cpu_count() or 1, needed))
    dataset = training_dataset(files, columns, filesystem, transform)
    if nbytes is not None and nbytes <= ray.cluster_resources().get("object_store_memory", 0) / 4:
        dataset = dataset.materialize()
    trainer = TorchTrainer(
        train_func,
        train_loop_config=train_config,
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=storage_path(output_dir),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset},
        dataset_config=DataConfig(execution_options=ingest_options()),
    )
    return trainer.fit()


def ingest_options() -> ExecutionOptions:
    """Ray Train's default ingest options with the order preserved, so that each worker's shard sees the same
    rows in the same order on every run (Train replaces a dataset's execution options with these)."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def training_dataset(files: Sequence[str | Path], columns: list[str], filesystem=None,
                     transform: RowTransform | None = None):
    """The Ray dataset the workers' shards come from: the Parquet ``columns`` in file and row order, passed
    through ``transform`` (a ``map_batches`` of CPU tasks) when given. Ray must be started."""
    # The dataset's own context, not the process's: current only while the read plans (its metadata fetch
    # reads it then) and copied into the dataset, whose later steps share the copy.
    ctx = ray.data.DataContext.get_current().copy()
    ctx.execution_options.preserve_order = True  # a resume skips exactly the batches already seen
    ctx.enable_progress_bars = False  # the loops print their own progress
    with ray.data.DataContext.current(ctx):
        dataset = ray.data.read_parquet([str(f) for f in files], columns=columns, filesystem=filesystem)
    if transform is not None:
        dataset = dataset.map_batches(transform.fn, batch_size=transform.batch_size, batch_format="numpy",
                                      num_cpus=transform.num_cpus)
    return dataset


@contextlib.contextmanager
def run_folder(run_dir: str | Path, remote: bool, cfg) -> Iterator[Path]:
    """A training stage's run folder for the length of the job -> a local temporary folder.

    Locally: this job is the folder's one writer (its lock) and ``config.yaml`` is written into it. On an
    object store (no lock: one job per run name) ``config.yaml`` is one PUT, and the temporary folder is
    where the job builds what it uploads afterwards (MLflow logs local files)."""
    with (contextlib.nullcontext() if remote else folder_lock(run_dir, "run_name")), \
            tempfile.TemporaryDirectory(prefix="avatar3d-run-") as local_tmp:
        if remote:
            upload(dump_config(cfg, Path(local_tmp) / "config.yaml"), f"{run_dir}/config.yaml")
        else:
            dump_config(cfg, Path(run_dir) / "config.yaml")
        yield Path(local_tmp)


def storage_path(output_dir: str | Path) -> str:
    """Ray Train's storage of a stage: ``<output_dir>/ray``, a local folder or an object-store URI (Ray
    uploads each checkpoint there through pyarrow.fs and restores the latest one when a run name runs again)."""
    if is_remote(output_dir):
        return f"{str(output_dir).rstrip('/')}/ray"
    return str(Path(output_dir) / "ray")


def check_checkpoint_to_load(output_dir: str | Path, run_name: str, resume: str, scaling, tags: tuple[str, ...],
                             restart: str) -> str | None:
    """Refuse, on the driver, a checkpoint the workers could not load: Ray's latest one of ``run_name``
    (restored when a run name runs again; its folders are named by time), else the ``resume`` folder. Local
    or on an object store alike: only file names are listed, no weights are read. -> the name of the latest
    checkpoint of ``run_name`` (the run resumes from it), or None."""
    run_storage = f"{storage_path(output_dir)}/{run_name}"
    fs, root = resolve_filesystem(run_storage)
    folders = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                     if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"))
    latest = folders[-1] if folders else None
    if latest:
        check_resume_engines(_file_names(fs, f"{root}/{latest}"), f"{run_storage}/{latest}", tags,
                             scaling.strategy, scaling.num_workers, field=f"run_name={run_name} (its last checkpoint)",
                             restart="pass another run_name to start afresh")
    elif resume:
        check_resume_engines(_file_names(*resolve_filesystem(resume)), resume, tags, scaling.strategy,
                             scaling.num_workers, field="resume", restart=restart)
    return latest


def _file_names(fs: pafs.FileSystem, folder: str) -> set[str]:
    """The files under ``folder``, as paths relative to it."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return {info.path[len(folder):].lstrip("/") for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File}


def worker_device():
    """This Ray Train worker's device: its assigned GPU where CUDA is usable, else the CPU."""
    if torch.cuda.is_available():
        return ray.train.torch.get_device()
    return torch.device("cpu")


def ray_report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
    """Report metrics (and a finished local checkpoint folder, which Ray copies into its storage before
    returning; the training loop removes the folder afterwards)."""
    if checkpoint_dir is None:
        ray.train.report(metrics)
        return
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)))


def tracking_hooks(context: WorkerContext, step_key: str = "kimg", step_scale: float = 1000.0):
    """Rank 0 logs into the driver's MLflow run (a :class:`RunLogger` on the run id in ``context``).

    -> (log_images(grids, cur_nimg), log_snapshot(path, info), log_metrics(metrics)); the metric step is
    ``metrics[step_key] * step_scale`` (images for the GAN's kimg).
    """
    logger = RunLogger(context.tracking_uri, context.run_id)

    def log_metrics(metrics: dict[str, float]) -> None:
        logger.log_metrics(metrics, step=int(metrics.get(step_key, 0) * step_scale))

    def log_images(grids: dict[str, Any], cur_nimg: int) -> None:
        for group, image in grids.items():
            logger.log_image(image, artifact_file=f"samples/{group}/kimg{cur_nimg / 1e3:08.3f}.png")

    def log_snapshot(path: Path, info: dict[str, Any]) -> None:
        logger.log_file(path, artifact_path=f"checkpoints/kimg{info['kimg']:08.3f}")

    return log_images, log_snapshot, log_metrics
