"""What runs on each Ray Train worker of ``avatar3d train-prior``: ``train_func(config)``.

The only module of the prior's training that talks to Ray Train (and, on rank
0, to MLflow, through the training system's hooks): it builds the denoiser
and its engine, feeds the plain loop (:mod:`avatar3d.prior.loop`) this
worker's shard of the pairs and turns reports into ``ray.train.report``
calls with checkpoints.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray.train
import torch

from avatar3d.gan.optim import OptimizerSpec
from avatar3d.prior.config import TrainPriorConfig
from avatar3d.prior.loop import PriorBatch, PriorLoopOptions, PriorTrainer, peek_step, training_loop
from avatar3d.prior.model import PriorSize, build_prior, set_w_stats, train_scheduler
from avatar3d.logs import setup_logging
from avatar3d.runtime import apply_local_defaults, set_torch_threads
from avatar3d.training.engines import make_engine
from avatar3d.training.loop import LoopHooks
from avatar3d.training.ray_fit import ray_report, tracking_hooks, unpack_worker_config, worker_device

log = logging.getLogger(__name__)


def train_func(config: dict[str, Any]) -> None:
    # Unpack the config first: the driver's TrainPriorConfig, rebuilt by the same from_dict, and the pairs' facts.
    cfg, context = unpack_worker_config(config, TrainPriorConfig)
    pairs = config["pairs"]
    seed, batch_size = cfg.seed, cfg.batch_size
    opts = PriorLoopOptions(total_steps=cfg.total_steps, steps_per_tick=cfg.steps_per_tick,
                            checkpoint_ticks=cfg.checkpoint_ticks, cond_drop_prob=cfg.model.cond_drop_prob,
                            precision=cfg.scaling.precision)

    setup_logging()  # a worker is its own process: the same format and level as the driver
    apply_local_defaults()
    set_torch_threads(context.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device()
    per_worker = batch_size // world

    # The denoiser, identical on every rank, with the pairs' w statistics frozen inside it.
    torch.manual_seed(seed)
    prior = build_prior(pairs["w_dim"], pairs["embed_dim"], PriorSize.preset(cfg.model.size))
    set_w_stats(prior, torch.tensor(pairs["w_mean"]), torch.tensor(pairs["w_std"]))
    engine = make_engine(prior.to(device), OptimizerSpec(lr=cfg.lr, betas=(0.9, 0.999)), cfg.scaling.strategy,
                         zero_stage=cfg.scaling.zero_stage, micro_batch=per_worker)
    trainer = PriorTrainer(engine, train_scheduler(cfg.model.prediction_type, cfg.model.num_train_timesteps),
                           seed, rank)

    # Where to continue from: Ray's latest checkpoint of this run, else an explicit resume folder.
    checkpoint = ray.train.get_checkpoint()
    resume_dir = Path(checkpoint.to_directory()) if checkpoint is not None else (
        Path(cfg.resume) if cfg.resume else None)

    hooks = LoopHooks(report=ray_report, print=(log.info if rank == 0 else (lambda *_: None)))
    if rank == 0 and context.run_id:
        _, _, log_metrics = tracking_hooks(context, step_key="step", step_scale=1.0)
        report = hooks.report
        hooks.report = lambda metrics, ckpt: (log_metrics(metrics), report(metrics, ckpt))

    shard = ray.train.get_dataset_shard("train")
    start = peek_step(resume_dir) if resume_dir is not None else 0
    batches = shard_batches(shard, per_worker, seed * 1000 + rank, start, context.rows_per_worker // per_worker)
    result = training_loop(trainer, batches, opts, hooks, rank=rank, world_size=world, device=device,
                           resume_from=resume_dir)
    if resume_dir is not None and checkpoint is not None:
        shutil.rmtree(resume_dir, ignore_errors=True)
    if rank == 0:
        log.info(f"done: {result.step} steps in {result.ticks} ticks")


def shard_batches(shard, per_worker: int, seed: int, start_step: int, batches_per_epoch: int) -> Iterator[PriorBatch]:
    """Endless batches from this worker's shard; epoch e shuffles locally with seed (seed, e).

    After a resume the batches of the current epoch already seen are skipped.
    """
    epoch, skip = divmod(start_step, max(batches_per_epoch, 1))
    while True:
        seen = 0
        local_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)
        for rows in shard.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True,
                                       local_shuffle_buffer_size=per_worker * 4, local_shuffle_seed=local_seed):
            seen += 1
            if skip:
                skip -= 1
                continue
            yield PriorBatch(torch.as_tensor(np.stack(rows["w"]).astype(np.float32)),
                             torch.as_tensor(np.stack(rows["embedding"]).astype(np.float32)))
        if seen == 0:
            raise ValueError(f"this worker's pairs shard holds fewer than {per_worker} rows (one batch); "
                             "lower batch_size or use fewer workers")
        epoch += 1
