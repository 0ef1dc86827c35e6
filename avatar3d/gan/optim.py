"""Optimisers for G and D behind a three-call interface: ``backward``, ``step``, ``module`` (and
``save`` / ``load`` for checkpoints: a loaded optimiser state keeps its moments and takes the engine's own
learning rate, so a resumed run may change it).

:class:`PlainEngine` is plain PyTorch: Adam plus, when a process group is up,
an all-reduce of the flattened gradients after backward (EG3D's way; DDP's
reducer cannot take R1's double backward). The training system adds a
DeepSpeed engine with the same three calls (``avatar3d.training.engines``),
so :class:`avatar3d.gan.step.GANTrainer` runs unchanged on either.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from avatar3d.safeio import load_tree, save_tree


@dataclass
class OptimizerSpec:
    """Adam settings for one network; ``reg_interval`` applies StyleGAN2's lazy-regularisation correction."""

    lr: float
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    reg_interval: int | None = None

    def corrected(self) -> tuple[float, tuple[float, float]]:
        """With a regulariser every k steps: lr *= k/(k+1), betas **= k/(k+1)."""
        if not self.reg_interval:
            return self.lr, (float(self.betas[0]), float(self.betas[1]))
        ratio = self.reg_interval / (self.reg_interval + 1)
        # torch's Adam rejects a mix of int and float betas: keep both floats.
        return self.lr * ratio, (float(self.betas[0] ** ratio), float(self.betas[1] ** ratio))

    def adam(self, params, fused: bool = False) -> torch.optim.Adam:
        """torch Adam; ``fused`` runs the update of all parameters as one kernel (same formula)."""
        lr, betas = self.corrected()
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=self.eps, fused=fused or None)


class PlainEngine:
    """torch Adam + manual gradient all-reduce across the process group (if any)."""

    kind = "plain"

    def __init__(self, module: torch.nn.Module, spec: OptimizerSpec):
        self.module = module
        # The fused update: on CPU the default per-parameter loop cost ~2% of a small GAN's step.
        self.optimizer = spec.adam(module.parameters(), fused=True)
        self.lr = spec.corrected()[0]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        """Average gradients over ranks, scrub NaN/inf, apply Adam, clear gradients."""
        params = [p for p in self.module.parameters() if p.grad is not None]
        if params and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([p.grad.flatten() for p in params])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(g.reshape(p.shape))
        for p in params:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, folder: Path, tag: str) -> None:
        """Rank 0 writes weights + optimiser state (every rank holds the same after the all-reduce)."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        save_tree({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}, Path(folder) / tag)

    def load(self, folder: Path, tag: str) -> None:
        tree = load_tree(Path(folder) / tag)
        self.module.load_state_dict(tree["module"])
        self.optimizer.load_state_dict(tree["optimizer"])
        set_lr(self.optimizer, self.lr)  # the saved state carries the rate it was saved with; this run's wins


def set_lr(optimizer, lr: float) -> None:
    """``lr`` on every parameter group (as an lr scheduler does; ZeRO optimisers pass the groups through)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
