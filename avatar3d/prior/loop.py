"""The prior's training loop: plain PyTorch, linear, the same shape as the GAN's.

No Ray, no MLflow: the caller passes an endless iterator of :class:`PriorBatch`
(this worker's share) and :class:`avatar3d.training.loop.LoopHooks`
(``report(metrics, checkpoint_dir)``, ``print``); the checkpoint folder is a
temporary one of the loop's, removed when ``report`` returns or raises (a hook
that wants to keep it copies it). The optimiser is an engine
from :func:`avatar3d.training.engines.make_engine` (DeepSpeed or plain), so
the denoiser is called as ``engine.module`` and the loss handed to
``engine.backward``.

A checkpoint folder holds the engine's state (DeepSpeed's own layout, or a
safeio tree), the step counter and every RNG the loop draws from: resuming
continues the exact random streams (bit-exact with the same batches). It
records :data:`RESUME_FORMAT` in its ``prior_state`` tree; one without it is
version 1, today's layout.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from avatar3d.prior.model import diffusion_loss
from avatar3d.safeio import check_format, load_tree, save_tree
from avatar3d.training.loop import (LoopHooks, NonFiniteLossError, autocast_for, checkpoint_folder, format_hms,
                                    peak_memory_gb)

STATE_TREE = "prior_state"
ENGINE_TAG = "engine"
WEIGHTS_DIR = "prior"  # the denoiser in diffusers' layout (save_pretrained), for the driver to pick up
# The layout of a checkpoint folder: engine/, prior_state/ (counters, config), prior/, rng_rank<r>/.
RESUME_FORMAT = "avatar3d.prior-resume/1"
UNTAGGED_RESUME_FORMAT = "avatar3d.prior-resume/1"  # states written before the tag existed: today's layout


@dataclass
class PriorBatch:
    w: torch.Tensor          # (B, w_dim)
    embedding: torch.Tensor  # (B, D)


@dataclass
class PriorLoopOptions:
    total_steps: int
    steps_per_tick: int
    checkpoint_ticks: int = 1
    cond_drop_prob: float = 0.1
    precision: str = "fp32"


@dataclass
class PriorLoopResult:
    step: int
    ticks: int
    last_metrics: dict[str, float] = field(default_factory=dict)


class PriorTrainer:
    """The denoiser's engine, the DDPM schedule and the loop's own random stream."""

    def __init__(self, engine, scheduler, seed: int, rank: int = 0):
        self.engine = engine
        self.scheduler = scheduler
        self.step_count = 0
        self.pairs_seen = 0
        # Noise, timesteps and condition drops come from this generator (per rank), never the global RNG.
        self.rng = torch.Generator().manual_seed(seed * 1000 + rank)

    @property
    def prior(self):
        return self.engine.module

    def step(self, batch: PriorBatch, cond_drop_prob: float, world_size: int = 1) -> dict[str, float]:
        self.prior.train()
        loss = diffusion_loss(self.prior, self.scheduler, batch.w, batch.embedding, cond_drop_prob, self.rng)
        self.engine.backward(loss)
        self.engine.step()
        self.step_count += 1
        self.pairs_seen += len(batch.w) * world_size
        return {"loss": float(loss.detach())}


def training_loop(trainer: PriorTrainer, batches: Iterator[PriorBatch], opts: PriorLoopOptions,
                  hooks: LoopHooks, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                  resume_from: Path | None = None) -> PriorLoopResult:
    """Train until ``opts.total_steps``; report every tick, checkpoint every ``checkpoint_ticks`` ticks."""
    # Resume: engine, counters and random streams exactly where they were.
    if resume_from is not None:
        load_resume_state(trainer, resume_from, rank)
        hooks.print(f"resumed from {resume_from} at step {trainer.step_count}")
    tick = trainer.step_count // opts.steps_per_tick
    tick_start_step, tick_start_time = trainer.step_count, time.time()
    start_time = time.time()
    losses: list[float] = []
    metrics: dict[str, float] = {}
    autocast = autocast_for(opts.precision, device)

    while trainer.step_count < opts.total_steps:
        # One denoising step on this worker's share of the batch.
        batch = next(batches)
        batch = PriorBatch(batch.w.to(device, non_blocking=True), batch.embedding.to(device, non_blocking=True))
        with autocast:
            stats = trainer.step(batch, opts.cond_drop_prob, world_size)
        if not math.isfinite(stats["loss"]):
            raise NonFiniteLossError(f"loss became {stats['loss']} at step {trainer.step_count}; the last good "
                                     "checkpoint is kept: lower lr, then resume")
        losses.append(stats["loss"])

        # Tick: progress line, metrics, checkpoint.
        done = trainer.step_count >= opts.total_steps
        if trainer.step_count - tick_start_step < opts.steps_per_tick and not done:
            continue
        tick += 1
        now = time.time()
        sec_per_step = (now - tick_start_time) / max(trainer.step_count - tick_start_step, 1)
        # "kimg" (thousands of pairs seen) is the step axis the MLflow hooks of the training system use.
        metrics = {"loss": float(np.mean(losses)), "step": trainer.step_count, "tick": tick,
                   "kimg": trainer.pairs_seen / 1e3, "sec_per_step": sec_per_step,
                   "peak_mem_gb": peak_memory_gb(device)}
        eta = (opts.total_steps - trainer.step_count) * sec_per_step
        hooks.print(f"tick {tick:<4d} step {trainer.step_count:<7d} loss {metrics['loss']:<8.4f} "
                    f"sec/step {sec_per_step:<7.3f} elapsed {format_hms(now - start_time)} eta {format_hms(eta)}")
        losses.clear()
        with checkpoint_folder(tick % opts.checkpoint_ticks == 0 or done, "avatar3d-prior-ckpt-") as checkpoint:
            if checkpoint is not None:
                save_resume_state(trainer, checkpoint, rank)
            hooks.report(metrics, checkpoint)
        tick_start_step, tick_start_time = trainer.step_count, time.time()

    return PriorLoopResult(step=trainer.step_count, ticks=tick, last_metrics=metrics)


# -- checkpoints ----------------------------------------------------------------------------

def save_resume_state(trainer: PriorTrainer, folder: Path, rank: int) -> None:
    """Engine (each rank its shard), rank 0's counters + diffusers-layout weights, every rank's RNG."""
    folder = Path(folder)
    trainer.engine.save(folder, ENGINE_TAG)
    if rank == 0:
        save_tree({"format": RESUME_FORMAT, "step": trainer.step_count, "pairs_seen": trainer.pairs_seen,
                   "prior_config": dict(trainer.prior.config)}, folder / STATE_TREE)
        trainer.prior.save_pretrained(folder / WEIGHTS_DIR)
    save_tree({"torch": torch.get_rng_state(), "loop": trainer.rng.get_state()}, folder / f"rng_rank{rank}")


def load_resume_state(trainer: PriorTrainer, folder: Path, rank: int) -> None:
    folder = Path(folder)
    state = read_resume_state(folder)
    saved = {k: v for k, v in state["prior_config"].items() if not k.startswith("_")}
    current = {k: v for k, v in dict(trainer.prior.config).items() if not k.startswith("_")}
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise ValueError(f"resume: the checkpoint's prior has a different architecture ({', '.join(changed)}); "
                         "resume with the same model options and pairs")
    trainer.engine.load(folder, ENGINE_TAG)
    trainer.step_count, trainer.pairs_seen = int(state["step"]), int(state["pairs_seen"])
    rng_path = folder / f"rng_rank{rank}"
    if rng_path.is_dir():  # absent when resuming with more workers than before: fresh streams then
        rng = load_tree(rng_path)
        torch.set_rng_state(rng["torch"])
        trainer.rng.set_state(rng["loop"])


def read_resume_state(folder: Path) -> dict:
    """Rank 0's part of a checkpoint folder (counters, the prior's config), its format checked."""
    folder = Path(folder)
    if not (folder / STATE_TREE).is_dir():
        raise FileNotFoundError(f"resume: {folder} is not a train-prior checkpoint (no {STATE_TREE}/); pass a "
                                "checkpoint folder of a train-prior run")
    state = load_tree(folder / STATE_TREE)
    check_format(folder / STATE_TREE, state.get("format", UNTAGGED_RESUME_FORMAT), RESUME_FORMAT,
                 "resume with the avatar3d release that wrote it, or start a new train-prior run", field="resume")
    return state


def peek_step(folder: Path) -> int:
    return int(read_resume_state(folder)["step"])


# -- batches in one process -------------------------------------------------------------------

def array_batches(w: np.ndarray, embedding: np.ndarray, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[PriorBatch]:
    """Endless shuffled batches from in-memory pairs (tests, benchmarks, single-process training).

    Epoch e is a permutation drawn from (seed, e); after a resume the stream
    continues at batch ``start_step`` exactly as an uninterrupted run would.
    """
    n = len(w)
    if n < batch_size:
        raise ValueError(f"batch_size: {batch_size} is larger than the {n} pairs; lower batch_size or add pairs")
    per_epoch = n // batch_size
    w_t, e_t = torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(embedding, dtype=torch.float32)
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        idx = torch.as_tensor(order[k * batch_size:(k + 1) * batch_size])
        yield PriorBatch(w_t[idx], e_t[idx])
        step += 1
