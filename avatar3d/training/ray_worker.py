"""What runs on each Ray Train worker: ``train_func(config)``.

The only module of the training system that talks to Ray Train (and, on rank
0, to MLflow): it unpacks the config, builds the trainer, feeds the loop this
worker's shard of the Ray dataset and turns the loop's reports into
``ray.train.report`` calls with checkpoints. The loop itself is plain PyTorch
(:mod:`avatar3d.training.loop`).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray.train
import torch

from avatar3d.evaluation.features import get_extractor
from avatar3d.evaluation.fid import evaluate_fid
from avatar3d.evaluation.options import FIDOptions, TruthOptions
from avatar3d.evaluation.truth import TruthWorld
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.native import enable_training_ops
from avatar3d.logs import setup_logging
from avatar3d.runtime import apply_local_defaults, cache_dir, set_torch_threads
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.data import TrainBatch, decode_batch
from avatar3d.training.engines import make_engine
from avatar3d.training.loop import (LoopHooks, LoopOptions, build_trainer, config_changes, peek_batch_idx,
                                    training_loop)
from avatar3d.training.ray_fit import ray_report, tracking_hooks, unpack_worker_config, worker_device

log = logging.getLogger(__name__)


def train_func(config: dict[str, Any]) -> None:
    # Unpack the config first: the driver's TrainGANConfig, rebuilt and validated by the same from_dict.
    cfg, context = unpack_worker_config(config, TrainGANConfig)
    gan_cfg = cfg.model.build()
    opts = LoopOptions(total_kimg=cfg.total_kimg, kimg_per_tick=cfg.kimg_per_tick, snapshot_ticks=cfg.snapshot_ticks,
                       image_ticks=cfg.image_ticks, precision=cfg.scaling.precision)

    setup_logging()  # a worker is its own process: the same format and level as the driver
    apply_local_defaults()
    set_torch_threads(context.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device()
    enable_training_ops(device)  # compiled CPU ops for this worker's training-mode renders (CPU only)
    per_worker = cfg.batch_size // world

    # Networks, identical on every rank; a transfer run starts G from a snapshot.
    def engine_factory(module, spec):
        return make_engine(module, spec, cfg.scaling.strategy, zero_stage=cfg.scaling.zero_stage,
                           micro_batch=per_worker)

    G = None
    if cfg.transfer:
        # the generator's shape must be the snapshot's; D and the optimisers are new, loss options may change
        # (the loss reads them from the trainer's config, never from G.cfg)
        snapshot = load_snapshot(cfg.transfer)
        config_changes(snapshot.gan_config, gan_cfg, "transfer")
        G = snapshot.generator.train().requires_grad_(True)
    torch.manual_seed(cfg.seed)
    trainer = build_trainer(gan_cfg, engine_factory, cfg.seed, rank, world, device, G=G)

    # Where to continue from: Ray's latest checkpoint of this run, else an explicit resume folder.
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(checkpoint.to_directory())
    elif cfg.resume:
        resume_dir = Path(cfg.resume)

    # What the loop hands outward: Ray reports, rank 0's MLflow logging and FID, the test hook.
    hooks = LoopHooks(report=ray_report, print=(log.info if rank == 0 else (lambda *_: None)))
    if rank == 0 and context.run_id:
        hooks.log_images, hooks.log_snapshot, metric_hook = tracking_hooks(context)
        report = hooks.report
        hooks.report = lambda metrics, ckpt: (metric_hook(metrics), report(metrics, ckpt))
    if rank == 0:
        hooks.evaluators = [(cfg.fid_ticks, _fid_hook(cfg.data.path, cfg.fid)),
                            (cfg.truth_ticks, _truth_hook(cfg.data.path, cfg.truth))]
    if config.get("after_tick") is not None:
        hooks.after_tick = config["after_tick"]

    # This worker's shard, resumed at the batch where the checkpoint stopped.
    shard = ray.train.get_dataset_shard("train")
    start_batch = peek_batch_idx(resume_dir) if resume_dir is not None else 0
    batches = _batches(shard, per_worker, gan_cfg.output_resolution, cfg.data.mirror, cfg.seed * 1000 + rank,
                       start_batch, context.rows_per_worker // per_worker, cfg.data.shuffle_labels)
    result = training_loop(trainer, batches, opts, hooks, rank=rank, world_size=world, device=device,
                           resume_from=resume_dir)
    if resume_dir is not None and checkpoint is not None:
        shutil.rmtree(resume_dir, ignore_errors=True)
    if rank == 0:
        log.info(f"done: {result.cur_nimg / 1e3:.3f} kimg in {result.ticks} ticks")


def _batches(shard, per_worker: int, resolution: int, mirror: bool, seed: int, start_batch: int,
             batches_per_epoch: int, shuffle_labels: bool = False) -> Iterator[TrainBatch]:
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
            yield decode_batch(rows, resolution, mirror, np.random.default_rng([seed, counter]), shuffle_labels)
            counter += 1
        if seen == 0:
            raise ValueError(f"this worker's data shard holds fewer than {per_worker} rows (one batch); "
                             "lower batch_size or use fewer workers")


def _fid_hook(data: str, fid: FIDOptions):
    """FID of the EMA generator against the training data, overall and per view group (rank 0),
    with the protocol of the evaluation stage's options (the same defaults as ``avatar3d fid``)."""

    def evaluate(trainer) -> dict[str, float]:
        result = evaluate_fid(trainer.G_ema, data, num_fakes=fid.num_fakes, seed=fid.seed,
                              truncation_psi=fid.truncation, per_view=fid.per_view, batch_size=fid.batch_size,
                              method=fid.frechet,
                              extractor=get_extractor(fid.extractor, next(trainer.G_ema.parameters()).device))
        return result.metrics()

    return evaluate


def _truth_hook(data: str, opts: TruthOptions):
    """Truth metrics of the EMA generator (rank 0); the truth world is built on first use and kept."""
    world: list[TruthWorld] = []

    def evaluate(trainer) -> dict[str, float]:
        G = trainer.G_ema
        if not world:
            world.append(TruthWorld.from_options(data, int(G.cfg.output_resolution), opts, cache_dir()))
        return world[0].evaluate(G, num_avatars=opts.num_avatars, seed=opts.seed).metrics()

    return evaluate
