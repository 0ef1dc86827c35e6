"""The DeepSpeed engine for G and D, beside the plain one, behind one small interface.

The GAN's losses call the networks directly (``engine.module``) and hand the
scalar loss to ``engine.backward``; ``engine.step`` all-reduces gradients,
applies the optimiser and clears the gradients. Two things shape this:

- The plain engine (:mod:`avatar3d.gan.optim`) all-reduces flattened
  gradients itself after backward, as EG3D does: DDP's reducer cannot take
  R1's double backward.
- DeepSpeed 0.19 hooks the outputs of ``engine(...)`` and refuses any other
  backward through them (R1's autograd.grad included), and two engines in one
  graph break ZeRO-2's bucketing. Calling ``engine.module`` directly, freezing
  the other network's parameters, and backpropagating with
  ``engine.backward`` trains with ZeRO stages 0-2 (seen identical losses).

Checkpoints of the DeepSpeed engine are DeepSpeed's own format (sharded
optimiser states, usable by its tools), loaded through a checkpoint engine
that unpickles with ``weights_only=True`` and an allow-list of DeepSpeed's
plain state classes: loading never runs code from a checkpoint file.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import torch

from avatar3d.config import ConfigError
from avatar3d.gan.optim import OptimizerSpec, PlainEngine, set_lr


class DeepSpeedEngine:
    """A DeepSpeed engine (ZeRO stage 0-2) around one network, with a torch Adam.

    A torch optimiser avoids JIT-building DeepSpeed's fused Adam; ZeRO shards
    its states just the same.
    """

    kind = "deepspeed"

    def __init__(self, module: torch.nn.Module, spec: OptimizerSpec, zero_stage: int, micro_batch: int):
        # Heavy (seconds), and the plain strategy runs without it. Importing DeepSpeed also fixes its accelerator
        # from DS_ACCELERATOR, which the Ray worker's apply_local_defaults() may set after importing this module.
        import deepspeed

        if zero_stage not in (0, 1, 2):
            raise ValueError(f"deepspeed.zero_stage: {zero_stage} is not supported for GAN training; pass 0, 1 or 2 "
                             "(stage 3 partitions the weights that the EMA copy and R1 read whole)")
        optimizer = spec.adam(module.parameters())
        self.lr = spec.corrected()[0]
        config = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": zero_stage},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
        self.engine.checkpoint_engine = _safe_checkpoint_engine()
        self.module = self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()  # all-reduce / reduce-scatter, optimiser step, zero_grad

    def save(self, folder: Path, tag: str) -> None:
        """Every rank writes its optimiser shard (DeepSpeed's layout under ``folder/tag``)."""
        self.engine.save_checkpoint(str(folder), tag=tag, save_latest=False)

    def load(self, folder: Path, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=tag, load_module_strict=True,
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"resume: no DeepSpeed checkpoint {tag!r} under {folder}")
        set_lr(self.optimizer, self.lr)  # the saved state carries the rate it was saved with; this run's wins


def make_engine(module: torch.nn.Module, spec: OptimizerSpec, strategy: str, zero_stage: int = 0,
                micro_batch: int = 1):
    """``strategy``: "plain" (torch + manual all-reduce) or "deepspeed"."""
    if strategy == "plain":
        return PlainEngine(module, spec)
    if strategy == "deepspeed":
        return DeepSpeedEngine(module, spec, zero_stage, micro_batch)
    raise ValueError(f"strategy: {strategy!r} is not known; pass 'deepspeed' or 'plain'")


def check_resume_engines(files: set[str], where: str, tags: tuple[str, ...], strategy: str, num_workers: int,
                         field: str, restart: str) -> None:
    """Refuse, before any worker starts, a checkpoint the workers could not load: one written by the other
    strategy, or ZeRO optimiser shards of another number of workers (DeepSpeed cannot re-partition them).
    ``files``: the checkpoint's file names, relative to it (listed locally or on an object store), ``where``
    names it; ``field`` names the option that chose it; ``restart`` says how to start over instead."""
    for tag in tags:
        written_by = "deepspeed" if f"{tag}/mp_rank_00_model_states.pt" in files else "plain"
        if written_by != strategy:
            raise ConfigError(f"{field}: {where} was written with scaling.strategy={written_by}; resume with "
                              f"scaling.strategy={written_by}, or {restart}")
        shards = len(fnmatch.filter(files, f"{tag}/zero_pp_rank_*_mp_rank_00_optim_states.pt"))
        if shards and shards != num_workers:
            raise ConfigError(f"{field}: {where} holds ZeRO optimiser shards of {shards} workers, which DeepSpeed "
                              f"cannot re-partition for scaling.num_workers={num_workers}; resume with "
                              f"scaling.num_workers={shards}, or {restart}")


def _safe_checkpoint_engine():
    # DeepSpeed stays out of this module's imports (see DeepSpeedEngine.__init__).
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine with ``weights_only=True`` loading."""

        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeTorchCheckpointEngine()


def _deepspeed_safe_globals() -> list:
    """DeepSpeed's plain-data classes that appear in its optimiser-state files."""
    from deepspeed.runtime.fp16 import loss_scaler  # DeepSpeed stays out of this module's imports (see above)

    names = []
    for name in ("LossScaler", "DynamicLossScaler", "LossScalerBase"):
        if hasattr(loss_scaler, name):
            names.append(getattr(loss_scaler, name))
    for module, name in (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            names.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):  # pragma: no cover - other DeepSpeed versions
            pass
    return names

