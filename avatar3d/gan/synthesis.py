"""StyleGAN2 synthesis network that paints the tri-plane (EG3D's backbone).

Blocks from 4x4 up to ``plane_resolution`` ('skip' architecture: every block
adds its toRGB output to the upsampled running image). The output has
``3 * plane_channels`` channels, reshaped by the generator into three planes.
Channel counts follow StyleGAN2: min(channel_base // res, channel_max).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from avatar3d.gan.layers import SynthesisBlock


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = ch[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, ch[res], w_dim, res, img_channels, up=res > 4, conv_clamp=conv_clamp)
            self.blocks.append(block)
            # Consecutive blocks share one w (the toRGB's w is the next block's first).
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last toRGB

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape (B, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        x = img = None
        idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws.narrow(1, idx, block.num_ws), noise_mode=noise_mode)
            idx += block.num_conv
        return img
