"""Exponential moving average of the generator's weights (StyleGAN2's G_ema).

Half-life ``ema_kimg`` thousand images, ramped up early on (``ema_rampup``):
beta = 0.5 ** (batch / min(ema_kimg * 1000, cur_nimg * ema_rampup)). Buffers
(w_avg, constant noise) are copied, not averaged.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(module: nn.Module) -> nn.Module:
    ema = copy.deepcopy(module).eval()
    ema.requires_grad_(False)
    return ema


def ema_beta(cur_nimg: float, batch_size: int, ema_kimg: float, ema_rampup: float | None) -> float:
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), module.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), module.buffers()):
        b_ema.copy_(b)
