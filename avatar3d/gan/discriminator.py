"""Dual discriminator with projection conditioning on the pose label (docs/method.md section 4).

EG3D's DualDiscriminator: the raw neural render is resized (bilinear,
antialiased) to the final image size and concatenated with it, giving 6
input channels; a StyleGAN2 residual discriminator scores them. The score is
projected on an embedding of the condition: logit = <phi(x), cmap(c_D)> /
sqrt(cmap_dim). Here c_D is the [fine ; coarse] pose label of
:class:`avatar3d.scene.pose_bins.PoseBins` with one part zeroed per sample
(see :mod:`avatar3d.gan.pose_label`), not EG3D's camera matrix.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from avatar3d.gan.layers import Conv2dLayer, FullyConnected, resize_bilinear, to_working_format
from avatar3d.gan.mapping import MappingNetwork


def resize_raw(image_raw: torch.Tensor, size: int) -> torch.Tensor:
    """EG3D's ``filtered_resizing`` (antialiased bilinear) of the raw render to ``size``."""
    return resize_bilinear(image_raw, size, antialias=True)


class DiscriminatorBlock(nn.Module):
    """Residual block: [fromRGB] conv3x3, conv3x3 down2, + 1x1 down2 skip, both scaled by sqrt(0.5)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class MinibatchStd(nn.Module):
    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"batch size {n} must be divisible by the minibatch-std group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(0)).square().mean(0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        return torch.cat([x, y.repeat(g, 1, h, w)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, cmap_dim: int, resolution: int = 4, mbstd_group_size: int = 4,
                 conv_clamp: float | None = None):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStd(mbstd_group_size, 1)
        self.conv = Conv2dLayer(in_channels + 1, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnected(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnected(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(self.mbstd(x))
        x = self.out(self.fc(x.flatten(1)))
        if cmap is not None:
            x = (x * cmap.to(x.dtype)).sum(dim=1, keepdim=True) * (1.0 / math.sqrt(self.cmap_dim))
        return x


class DualDiscriminator(nn.Module):
    """score(image, image_raw, c_D) -> logits (N, 1)."""

    def __init__(self, c_dim: int, img_resolution: int, channel_base: int = 32768, channel_max: int = 512,
                 mapping_layers: int = 8, mbstd_group_size: int = 4, conv_clamp: float | None = None,
                 img_channels: int = 3):
        super().__init__()
        self.c_dim, self.img_resolution = c_dim, img_resolution
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        cmap_dim = ch[4] if c_dim > 0 else 0
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[r] if r < img_resolution else 0, ch[r], ch[r // 2], 2 * img_channels, conv_clamp)
            for r in self.block_resolutions
        )
        if c_dim > 0:
            self.mapping = MappingNetwork(0, c_dim, cmap_dim, num_ws=None, num_layers=mapping_layers,
                                          w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(ch[4], cmap_dim, 4, mbstd_group_size, conv_clamp)

    def forward(self, image: torch.Tensor, image_raw: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if image.shape[-1] != self.img_resolution:
            raise ValueError(f"image must be {self.img_resolution}px, got {tuple(image.shape)}")
        img = to_working_format(torch.cat([image, resize_raw(image_raw, image.shape[-1]).to(image.dtype)], 1))
        x = None
        for block in self.blocks:
            x = block(x, img)
        cmap = None
        if self.c_dim > 0:
            if c is None or c.shape[-1] != self.c_dim:
                raise ValueError(f"c must be pose labels of shape (N, {self.c_dim}), got "
                                 f"{None if c is None else tuple(c.shape)}")
            cmap = self.mapping(None, c.to(image.dtype))
        return self.b4(x, cmap)
