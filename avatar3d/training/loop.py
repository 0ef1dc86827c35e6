"""The GAN training loop, in the NVlabs shape: linear, split by short comments.

Plain PyTorch: no Ray, no MLflow. What the cluster adds comes in through two
small objects the caller passes:

- ``batches``: an endless iterator of :class:`TrainBatch` (this worker's share),
- ``hooks``: :class:`LoopHooks`, whose ``report`` receives metrics and, every
  few ticks, a finished checkpoint folder; ``log_images`` / ``log_snapshot``
  receive sample grids and inference snapshots (rank 0 only).

A checkpoint folder is a temporary folder of the loop's, valid while ``report``
runs: the loop removes it when ``report`` returns or raises, on every rank (Ray's
``ray.train.report`` has copied it into storage by then; a hook that wants to
keep one copies it).

:mod:`avatar3d.training.ray_worker` supplies Ray Train's versions; tests and
benchmarks run the same loop in one process with their own :class:`LoopHooks`.

A checkpoint folder (the resume state) records :data:`RESUME_FORMAT` in its
``loop_state`` tree; one without it is version 1, today's layout.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from avatar3d.gan.config import GANConfig
from avatar3d.gan.step import GANTrainer
from avatar3d.safeio import check_format, load_tree, save_tree
from avatar3d.gan.snapshot import save_snapshot
from avatar3d.training.data import TrainBatch
from avatar3d.gan.samples import sample_grids

STATE_TREE = "loop_state"
SNAPSHOT_FILE = "snapshot.safetensors"
# The layout of a checkpoint folder: engines G/ and D/, loop_state/ (EMA, counters, config), rng_rank<r>/.
RESUME_FORMAT = "avatar3d.gan-resume/1"
UNTAGGED_RESUME_FORMAT = "avatar3d.gan-resume/1"  # states written before the tag existed: today's layout

log = logging.getLogger(__name__)


@dataclass
class LoopOptions:
    total_kimg: float
    kimg_per_tick: float
    snapshot_ticks: int = 1
    image_ticks: int = 1
    precision: str = "fp32"


@dataclass
class LoopHooks:
    """What the loop hands outward. The defaults do nothing."""

    # The checkpoint folder is removed when report returns: copy it to keep it.
    report: Callable[[dict[str, float], Path | None], None] = lambda metrics, ckpt: None
    log_images: Callable[[dict[str, Any], int], None] = lambda grids, step: None
    log_snapshot: Callable[[Path, dict[str, Any]], None] = lambda path, info: None
    # Rank 0's evaluations, each (every N ticks, trainer -> metrics), e.g. FID of the EMA generator.
    evaluators: list[tuple[int, Callable[[GANTrainer], dict[str, float]]]] = field(default_factory=list)
    # Called on every rank after each tick's report with (tick, rank): tests inject faults here.
    after_tick: Callable[[int, int], None] = lambda tick, rank: None
    print: Callable[[str], None] = log.info


@dataclass
class LoopResult:
    cur_nimg: int
    ticks: int
    last_metrics: dict[str, float] = field(default_factory=dict)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf: training stops before anything is checkpointed."""


def training_loop(trainer: GANTrainer, batches: Iterator[TrainBatch], opts: LoopOptions, hooks: LoopHooks,
                  rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                  resume_from: Path | None = None) -> LoopResult:
    """Train until ``opts.total_kimg``; checkpoint every ``snapshot_ticks`` ticks."""
    # Resume: engines, EMA, counters and RNG streams exactly where they were.
    if resume_from is not None:
        load_resume_state(trainer, resume_from, rank)
        hooks.print(f"resumed from {resume_from} at kimg {trainer.cur_nimg / 1e3:.3f}")
    total_nimg = int(opts.total_kimg * 1000)
    tick_nimg = max(int(opts.kimg_per_tick * 1000), 1)
    tick = trainer.cur_nimg // tick_nimg
    tick_start_nimg = trainer.cur_nimg
    tick_start_time = start_time = time.time()
    metrics: dict[str, float] = {}
    sums: dict[str, list[float]] = {}
    autocast = autocast_for(opts.precision, device)
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    while trainer.cur_nimg < total_nimg:
        # Fetch this worker's share of the batch.
        batch = next(batches)
        images, cameras = batch.images.to(device, non_blocking=True), batch.cameras.to(device, non_blocking=True)

        # G and D phases, EMA, image counter.
        with autocast:
            stats = trainer.step(images, cameras)
        for key, value in stats.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{key} became {value} at kimg {trainer.cur_nimg / 1e3:.3f}; the last "
                                         "good checkpoint is kept: lower the learning rates or raise r1_gamma, "
                                         "then resume")
            sums.setdefault(key, []).append(value)

        # Tick: progress line, metrics, images, checkpoint.
        done = trainer.cur_nimg >= total_nimg
        if trainer.cur_nimg < tick_start_nimg + tick_nimg and not done:
            continue
        tick += 1
        now = time.time()
        sec_per_kimg = (now - tick_start_time) / max((trainer.cur_nimg - tick_start_nimg) / 1e3, 1e-9)
        metrics = {k: float(np.mean(v)) for k, v in sums.items()}
        metrics.update(kimg=trainer.cur_nimg / 1e3, tick=tick, sec_per_kimg=sec_per_kimg,
                       peak_mem_gb=peak_memory_gb(device))
        eta = (total_nimg - trainer.cur_nimg) / 1e3 * sec_per_kimg
        hooks.print(f"tick {tick:<4d} kimg {metrics['kimg']:<8.3f} sec/kimg {sec_per_kimg:<8.1f} "
                    f"loss_G {metrics.get('loss_G', float('nan')):<7.3f} "
                    f"loss_D {metrics.get('loss_D_real', 0) + metrics.get('loss_D_fake', 0):<7.3f} "
                    f"r1 {metrics.get('loss_D_r1', float('nan')):<8.4f} "
                    f"mem {metrics['peak_mem_gb']:.2f}GB elapsed {format_hms(now - start_time)} eta {format_hms(eta)}")
        sums.clear()
        if rank == 0 and (tick % opts.image_ticks == 0 or done):
            hooks.log_images(sample_grids(trainer.G_ema, trainer.cfg, device=device), trainer.cur_nimg)
        evaluated = {}
        for every, evaluate in hooks.evaluators if rank == 0 else []:
            if every and (tick % every == 0 or done):
                evaluated.update(evaluate(trainer))
        if evaluated:
            metrics.update(evaluated)
            hooks.print("  " + "  ".join(f"{k} {v:.3g}" for k, v in evaluated.items()))
        with checkpoint_folder(tick % opts.snapshot_ticks == 0 or done, "avatar3d-ckpt-") as checkpoint:
            if checkpoint is not None:
                save_resume_state(trainer, checkpoint, rank)
                if rank == 0:
                    info = {"kimg": trainer.cur_nimg / 1e3, "tick": tick,
                            "neural_rendering_resolution": int(trainer.G_ema.neural_rendering_resolution)}
                    save_snapshot(checkpoint / SNAPSHOT_FILE, trainer.G_ema, trainer.cfg.to_dict(), info)
                    hooks.log_snapshot(checkpoint / SNAPSHOT_FILE, info)
            hooks.report(metrics, checkpoint)
        hooks.after_tick(tick, rank)
        tick_start_nimg, tick_start_time = trainer.cur_nimg, time.time()

    return LoopResult(cur_nimg=trainer.cur_nimg, ticks=tick, last_metrics=metrics)


@contextmanager
def checkpoint_folder(due: bool, prefix: str) -> Iterator[Path | None]:
    """A temporary checkpoint folder when one is ``due`` (else None), removed when the block ends: reported
    (Ray has its copy by then), or failed. Both training loops use it."""
    if not due:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- resume state -------------------------------------------------------------------

def save_resume_state(trainer: GANTrainer, folder: Path, rank: int) -> None:
    """Engines (each rank its own shards), then rank 0's EMA + counters, then every rank's RNG."""
    trainer.G_engine.save(folder, "G")
    trainer.D_engine.save(folder, "D")
    if rank == 0:
        save_tree({"format": RESUME_FORMAT, "G_ema": trainer.G_ema.state_dict(), "cur_nimg": trainer.cur_nimg,
                   "batch_idx": trainer.batch_idx, "gan_config": json.dumps(trainer.cfg.to_dict())},
                  folder / STATE_TREE)
    save_tree(_rng_state(trainer), folder / f"rng_rank{rank}")


# Loss weights, schedules and learning rates a resumed run may change (EG3D resumes with new loss options too):
# none of them shapes a tensor of the state or the optimisers' lazy-regularisation correction, so the state
# means the same. The engines set their own learning rate over the one the loaded optimiser state holds.
RESUMABLE_FIELDS = ("r1_gamma", "density_reg", "density_reg_p_dist", "blur_init_sigma", "blur_fade_kimg",
                    "gpc_swap_prob", "gpc_fade_kimg", "ema_kimg", "ema_rampup", "lr_g", "lr_d")


def config_changes(saved: dict[str, Any], cfg: GANConfig, what: str = "resume") -> dict[str, tuple[Any, Any]]:
    """{field: (saved, new)} of the model options that differ from ``saved`` (a stored GAN config); ValueError
    naming the first words ``what`` ("resume", "transfer") if one outside :data:`RESUMABLE_FIELDS` differs."""
    new = json.loads(json.dumps(cfg.to_dict()))
    changed = {k: (saved.get(k), new.get(k)) for k in sorted(set(saved) | set(new)) if saved.get(k) != new.get(k)}
    fixed = [k for k in changed if k not in RESUMABLE_FIELDS]
    if fixed:
        source = "checkpoint" if what == "resume" else "snapshot"
        raise ValueError(f"{what}: the {source} was trained with a different model config ({', '.join(fixed)}); "
                         f"{what} with the same model options (only loss weights, schedules and learning rates may "
                         f"change: {', '.join(RESUMABLE_FIELDS)}); a different model is a new run")
    return changed


def resume_changes(saved: dict[str, Any], cfg: GANConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, new)} of the model options a resume changes; ValueError if the state cannot take them.

    Only :data:`RESUMABLE_FIELDS` may differ, and a regulariser may not be switched on or off (that changes
    the optimisers' lazy-regularisation lr and betas, which the Adam moments were accumulated under). A
    transfer (new optimisers) may switch them: :func:`config_changes` with ``what="transfer"``.
    """
    changed = config_changes(saved, cfg)
    for name in ("r1_gamma", "density_reg"):
        if name in changed and ((changed[name][0] or 0) > 0) != ((changed[name][1] or 0) > 0):
            raise ValueError(f"resume: {name} {changed[name][0]} -> {changed[name][1]} switches a regulariser "
                             "on or off, which changes the optimisers' lazy-regularisation settings that the state "
                             "was trained under; keep it above 0 (or at 0)")
    return changed


def load_resume_state(trainer: GANTrainer, folder: Path, rank: int) -> None:
    folder = Path(folder)
    state = read_resume_state(folder)
    changed = resume_changes(json.loads(state["gan_config"]), trainer.cfg)
    if changed and rank == 0:
        log.info("resume: continuing with changed settings: "
                 + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    trainer.G_engine.load(folder, "G")  # the engines keep this run's learning rates over the saved ones
    trainer.D_engine.load(folder, "D")
    trainer.G_ema.load_state_dict(state["G_ema"])
    trainer.cur_nimg, trainer.batch_idx = int(state["cur_nimg"]), int(state["batch_idx"])
    res = trainer.cfg.neural_resolution_at(trainer.cur_nimg)
    trainer.G.neural_rendering_resolution = trainer.G_ema.neural_rendering_resolution = res
    rng_path = folder / f"rng_rank{rank}"
    if rng_path.is_dir():  # absent when resuming with more workers than before: fresh streams then
        _set_rng_state(trainer, load_tree(rng_path))


def read_resume_state(folder: Path) -> dict[str, Any]:
    """Rank 0's part of a checkpoint folder (EMA, counters, config), its format checked."""
    folder = Path(folder)
    if not (folder / STATE_TREE).is_dir():
        raise FileNotFoundError(f"resume: {folder} is not a training checkpoint (no {STATE_TREE}/); pass a "
                                "checkpoint folder of a train-gan run, or use transfer= for a snapshot")
    state = load_tree(folder / STATE_TREE)
    check_format(folder / STATE_TREE, state.get("format", UNTAGGED_RESUME_FORMAT), RESUME_FORMAT,
                 "resume with the avatar3d release that wrote it, or start a new run with "
                 f"transfer={folder / SNAPSHOT_FILE}", field="resume")
    return state


def peek_batch_idx(folder: Path) -> int:
    """The step counter stored in a resume state (to skip the batches of the epoch already seen)."""
    return int(read_resume_state(folder)["batch_idx"])


def _rng_state(trainer: GANTrainer) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "pose": trainer.pose_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(trainer: GANTrainer, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    trainer.pose_generator.set_state(state["pose"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- small helpers ----------------------------------------------------------------------

def autocast_for(precision: str, device):
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def peak_memory_gb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    except ImportError:  # pragma: no cover
        return float("nan")


def format_hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def build_trainer(gan_cfg: GANConfig, engine_factory, seed: int, rank: int, world_size: int,
                  device: str | torch.device, G: torch.nn.Module | None = None) -> GANTrainer:
    """G, D and the EMA built identically on every rank, then per-rank noise streams."""
    torch.manual_seed(seed)
    trainer = GANTrainer(gan_cfg, G=G, engine_factory=engine_factory, world_size=world_size, device=device,
                         pose_generator=torch.Generator().manual_seed(seed * 1000 + rank))
    torch.manual_seed(seed * 1000 + rank + 1)
    return trainer
