"""Super-resolution head: raw neural render (32 feature channels) -> final RGB image.

EG3D's SuperresolutionHybrid{2X,4X,8XDC}, generalised: the raw features and
RGB are first resized (bilinear, antialiased) to ``input_resolution``; then
two modulated synthesis blocks, conditioned on the last w, take them to
``output_resolution``. For a 4x ratio both blocks upsample (8XDC: 128 -> 256
-> 512); for 2x the first keeps the resolution (2X/4X: "NoUp" then up).
The RGB of the raw render is the skip input of the blocks' toRGB chain.
"""
from __future__ import annotations

import torch
from torch import nn

from avatar3d.gan.layers import SynthesisBlock, resize_bilinear, to_working_format


class SuperResolution(nn.Module):
    num_ws = 3  # each block uses 3 (conv0, conv1, toRGB); both take the same w

    def __init__(self, in_channels: int, w_dim: int, input_resolution: int, output_resolution: int,
                 channels: tuple[int, int] = (256, 128), antialias: bool = True, noise_mode: str = "none",
                 conv_clamp: float | None = None):
        super().__init__()
        ratio = output_resolution // input_resolution
        if ratio not in (2, 4):
            raise ValueError(f"super-resolution ratio must be 2 or 4, got {output_resolution}/{input_resolution}")
        self.input_resolution, self.antialias, self.noise_mode = input_resolution, antialias, noise_mode
        use_noise = noise_mode != "none"
        mid = input_resolution * 2 if ratio == 4 else input_resolution
        self.block0 = SynthesisBlock(in_channels, channels[0], w_dim, mid, 3, up=ratio == 4,
                                     use_noise=use_noise, conv_clamp=conv_clamp)
        self.block1 = SynthesisBlock(channels[0], channels[1], w_dim, output_resolution, 3, up=True,
                                     use_noise=use_noise, conv_clamp=conv_clamp)

    def forward(self, rgb: torch.Tensor, feats: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        ws = ws[:, -1:].expand(-1, self.num_ws, -1)
        if feats.shape[-1] != self.input_resolution:
            feats = resize_bilinear(feats, self.input_resolution, self.antialias)
            rgb = resize_bilinear(rgb, self.input_resolution, self.antialias)
        x, rgb = self.block0(to_working_format(feats), to_working_format(rgb), ws, noise_mode=self.noise_mode)
        x, rgb = self.block1(x, rgb, ws, noise_mode=self.noise_mode)
        return rgb.contiguous()
