"""What runs on each Ray Train worker: ``train_func(config)``.

The only module of the training system that talks to Ray Train (and, on rank
0, to MLflow): it unpacks the config, builds the trainer, feeds the loop this
worker's shard of the Ray dataset and turns the loop's reports into
``ray.train.report`` calls with checkpoints. The loop itself is plain PyTorch
(:mod:`avatar3d.training.loop`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from avatar3d.training.data import TrainBatch, decode_batch


def train_func(config: dict[str, Any]) -> None:
    import ray.train

    from avatar3d.gan.config import GANConfig
    from avatar3d.runtime import apply_local_defaults, set_torch_threads, use_caching_cpu_allocator
    from avatar3d.training.checkpoint import read_snapshot_metadata
    from avatar3d.training.engines import make_engine
    from avatar3d.training.ray_fit import mlflow_hooks, ray_report, worker_device
    from avatar3d.training.loop import LoopHooks, LoopOptions, build_trainer, peek_batch_idx, training_loop

    # Unpack the config first.
    gan_cfg = GANConfig.from_dict(config["gan_config"])
    seed, batch_size, mirror = config["seed"], config["batch_size"], config["mirror"]
    strategy, zero_stage = config["strategy"], config["zero_stage"]
    rows_per_worker = config["rows_per_worker"]
    opts = LoopOptions(**config["loop"])
    tracking = config.get("tracking") or {}

    apply_local_defaults()
    set_torch_threads(config.get("torch_threads"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device()
    use_caching_cpu_allocator(device)
    per_worker = batch_size // world

    # Networks, identical on every rank; a transfer run starts G from a snapshot.
    def engine_factory(module, spec):
        return make_engine(module, spec, strategy, zero_stage=zero_stage, micro_batch=per_worker)

    G = None
    if config.get("transfer"):
        from avatar3d.training.checkpoint import load_snapshot

        meta = read_snapshot_metadata(config["transfer"])
        if GANConfig.from_dict(meta["gan_config"]) != gan_cfg:
            raise ValueError("transfer: the snapshot's GAN config differs from model options; "
                             "pass the same model preset/overrides as the snapshot")
        G = load_snapshot(config["transfer"]).generator.train().requires_grad_(True)
    torch.manual_seed(seed)
    trainer = build_trainer(gan_cfg, engine_factory, seed, rank, world, device, G=G)

    # Where to continue from: Ray's latest checkpoint of this run, else an explicit resume folder.
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(checkpoint.to_directory())
    elif config.get("resume"):
        resume_dir = Path(config["resume"])

    hooks = LoopHooks(report=ray_report, print=(print if rank == 0 else (lambda *_: None)))
    if rank == 0 and tracking.get("run_id"):
        hooks.log_images, hooks.log_snapshot, metric_hook = mlflow_hooks(tracking)
        report = hooks.report
        hooks.report = lambda metrics, ckpt: (metric_hook(metrics), report(metrics, ckpt))

    if rank == 0 and opts.eval_ticks:
        hooks.evaluate = _fid_hook(config["fid"])

    shard = ray.train.get_dataset_shard("train")
    start_batch = peek_batch_idx(resume_dir) if resume_dir is not None else 0
    batches = _batches(shard, per_worker, gan_cfg.output_resolution, mirror, seed * 1000 + rank, start_batch,
                       rows_per_worker // per_worker)
    result = training_loop(trainer, batches, opts, hooks, rank=rank, world_size=world, device=device,
                           resume_from=resume_dir)
    if resume_dir is not None and checkpoint is not None:
        shutil.rmtree(resume_dir, ignore_errors=True)
    if rank == 0:
        print(f"done: {result.cur_nimg / 1e3:.3f} kimg in {result.ticks} ticks")


def _batches(shard, per_worker: int, resolution: int, mirror: bool, seed: int, start_batch: int,
             batches_per_epoch: int) -> Iterator[TrainBatch]:
    """Endless decoded batches from this worker's shard, one epoch after another.

    After a resume the first ``start_batch % batches_per_epoch`` batches of the
    epoch are skipped, and each batch's mirror flips are drawn from its own
    seed (seed, batch number): the resumed stream equals the uninterrupted one.
    """
    counter, skip = start_batch, start_batch % max(batches_per_epoch, 1)
    while True:
        seen = 0
        for rows in shard.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True):
            seen += 1
            if skip:
                skip -= 1
                continue
            yield decode_batch(rows, resolution, mirror, np.random.default_rng([seed, counter]))
            counter += 1
        if seen == 0:
            raise ValueError(f"this worker's data shard holds fewer than {per_worker} rows (one batch); "
                             "lower batch_size or use fewer workers")


def _fid_hook(fid: dict[str, Any]):
    """FID of the EMA generator against the training data, overall and per view group (rank 0)."""
    from avatar3d.evaluation.fid import evaluate_fid

    def evaluate(trainer) -> dict[str, float]:
        # eigh gives clean-fid's number (to ~1e-14) about 5x faster than scipy's sqrtm.
        result = evaluate_fid(trainer.G_ema, fid["data_path"], num_fakes=fid["num_fakes"], seed=0, method="eigh")
        return result.metrics()

    return evaluate
