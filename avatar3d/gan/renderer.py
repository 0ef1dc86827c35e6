"""Volume rendering of the tri-plane: decoder MLP, stratified + importance sampling,
alpha compositing (EG3D's ImportanceRenderer + MipRayMarcher2 maths).

Layout: we keep channels first, (N, C, R, S) for N images, R rays, S samples,
so that the composited features reshape straight into an (N, C, H, W) image
and the per-ray scans (cumprod, sort) run over the contiguous last dim.

Per ray (EG3D):
  1. ``depth_samples`` stratified depths: linspace(ray_start, ray_end) plus
     uniform jitter of one bin width.
  2. Decode density + features there; composite to get weights.
  3. ``importance_samples`` more depths by inverse-CDF sampling of the
     (max-then-average smoothed, +0.01) weights over the bin midpoints.
  4. Decode those, merge both sets sorted by depth, composite:
     midpoint colours/densities, density = softplus(sigma - 1),
     alpha = 1 - exp(-density * delta), T = cumprod(1 - alpha + 1e-10).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torch.autograd.function import once_differentiable

from avatar3d import native
from avatar3d.gan.layers import FullyConnected
from avatar3d.gan.triplane import sample_triplane


# MipNeRF's widened sigmoid, features = sigmoid(x) * (1 + 2 eps) - eps, keeps 0 and 1 reachable.
_SIG_SCALE = 1 + 2 * 0.001
_SIG_SHIFT = 0.001


@dataclass
class DecoderOutput:
    """Decoder output at points, channels first: raw density ``sigma`` (N, 1, ...) before
    the softplus(sigma - 1) activation, and ``unit`` = sigmoid of the feature logits
    (N, C, ...). The features proper are the affine :attr:`features`; the renderer
    composites ``unit`` and applies the affine to the (much smaller) composited image,
    which is the same sum because compositing is linear in the colours."""

    sigma: torch.Tensor
    unit: torch.Tensor

    @property
    def features(self) -> torch.Tensor:
        return self.unit * _SIG_SCALE - _SIG_SHIFT

    @classmethod
    def from_features(cls, sigma: torch.Tensor, features: torch.Tensor) -> "DecoderOutput":
        return cls(sigma=sigma, unit=(features + _SIG_SHIFT) / _SIG_SCALE)


@dataclass
class RenderOutput:
    features: torch.Tensor  # (N, C, H, W) composited features; [:, :3] is the raw RGB in [-1, 1]
    depth: torch.Tensor     # (N, 1, H, W) expected depth along the ray
    weight_sum: torch.Tensor  # (N, 1, H, W) accumulated opacity (silhouette)


class OSGDecoder(nn.Module):
    """Mean tri-plane feature -> (sigma, features): FC(C->hidden), softplus, FC(hidden->1+out).

    Runs channels first as batched matmuls on (N, C, points), so neither the
    tri-plane lookup's output nor the decoder's needs a transpose.
    """

    def __init__(self, in_features: int = 32, hidden: int = 64, out_features: int = 32):
        super().__init__()
        self.fc0 = FullyConnected(in_features, hidden)
        self.fc1 = FullyConnected(hidden, 1 + out_features)

    def forward(self, feats: torch.Tensor, input_scale: float = 1.0, compiled: bool = False) -> DecoderOutput:
        """feats (N, C, ...) mean plane features (or their sum with ``input_scale`` = 1/3).
        ``compiled``: as in :func:`bias_softplus`."""
        shape = feats.shape
        x = feats.reshape(shape[0], shape[1], -1)  # (N, C, P)
        w0, b0 = _channel_weights(self.fc0, x.dtype, input_scale)
        x = bias_softplus(torch.bmm(w0.expand(x.shape[0], -1, -1), x), b0, compiled)
        w1, b1 = _channel_weights(self.fc1, x.dtype)
        x = torch.bmm(w1.expand(x.shape[0], -1, -1), x).add_(b1.view(1, -1, 1)).view(shape[0], -1, *shape[2:])
        return DecoderOutput(sigma=x[:, :1], unit=torch.sigmoid(x[:, 1:]))


def _channel_weights(fc: FullyConnected, dtype: torch.dtype, input_scale: float = 1.0):
    """An equalized-lr layer's effective (weight, bias), ``input_scale`` folded into the weight."""
    return fc.weight.to(dtype) * (fc.weight_gain * input_scale), fc.bias.to(dtype) * fc.bias_gain


def bias_softplus(h: torch.Tensor, b: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """softplus(h + b) with a bias per channel, h (N, H, P): the bias add and ATen's softplus.

    With ``compiled`` (training-mode renders) in a process that enabled
    :func:`avatar3d.native.enable_training_ops`, on CPU (float32, AVX-512): one compiled
    pass, 4x faster than those two ops, whose log1p is not vectorised.
    """
    if compiled and h.device.type == "cpu" and h.dtype == torch.float32 and h.is_contiguous():
        ops = native.training_ops()
        if ops is not None and ops.has_vector_math():
            return _BiasSoftplus.apply(h, b, ops)
    return F.softplus(h + b.view(1, -1, 1))


class _BiasSoftplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, b, ops):
        b = b.contiguous()
        ctx.save_for_backward(h, b)
        ctx.ops = ops
        return ops.bias_softplus_forward(h, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        h, b = ctx.saved_tensors
        gh, gb = ctx.ops.bias_softplus_backward(grad.contiguous(), h, b)
        return gh, gb, None


def stratified_depths(n: int, rays: int, samples: int, ray_start: float, ray_end: float,
                      device, dtype=torch.float32) -> torch.Tensor:
    """(N, 1, R, S) depths: evenly spaced bins from ray_start, each jittered by U(0, bin width)."""
    base = torch.linspace(ray_start, ray_end, samples, device=device, dtype=dtype)
    delta = (ray_end - ray_start) / (samples - 1)
    return base + torch.rand(n, 1, rays, samples, device=device, dtype=dtype) * delta


def march(sigmas: torch.Tensor, depths: torch.Tensor):
    """EG3D's MipRayMarcher2 weights over the last dim (sorted samples).

    sigmas (N, 1, R, S) raw, depths (N, 1, R, S). Returns (weights (N, 1, R, S-1) of the
    S-1 intervals, depth (N, 1, R), clamped to the sampled range like EG3D's).
    """
    deltas = depths[..., 1:] - depths[..., :-1]
    sig_mid = (sigmas[..., :-1] + sigmas[..., 1:]) * 0.5
    alpha = 1 - torch.exp(-F.softplus(sig_mid - 1.0) * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], -1), -1)
    weights = alpha * trans[..., :-1]
    depth_mid = (depths[..., :-1] + depths[..., 1:]) * 0.5
    depth = (weights * depth_mid).sum(-1) / weights.sum(-1)
    depth = torch.nan_to_num(depth, float("inf")).clamp(depths.min(), depths.max())
    return weights, depth


def sample_weights(weights: torch.Tensor) -> torch.Tensor:
    """Interval weights (..., S-1) -> per-sample weights (..., S): v_s = (w_{s-1} + w_s) / 2.

    EG3D composites midpoint colours, sum_s w_s (c_s + c_{s+1}) / 2, which is sum_s v_s c_s.
    """
    zero = torch.zeros_like(weights[..., :1])
    return (torch.cat([weights, zero], -1) + torch.cat([zero, weights], -1)) * 0.5


def composite(colors: torch.Tensor, sigmas: torch.Tensor, depths: torch.Tensor, white_back: bool = False):
    """Reference compositing of one sorted sample set (EG3D's MipRayMarcher2).

    colors (N, C, R, S) features, sigmas (N, 1, R, S) raw, depths (N, 1, R, S).
    Returns (features (N, C, R) scaled to [-1, 1], depth (N, 1, R), weights (N, 1, R, S-1)).
    """
    weights, depth = march(sigmas, depths)
    rgb = (colors * sample_weights(weights)).sum(-1)
    if white_back:
        rgb = rgb + 1 - weights.sum(-1)
    return rgb * 2 - 1, depth, weights


@torch.no_grad()
def importance_depths(depths: torch.Tensor, weights: torch.Tensor, n_importance: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """EG3D's ``sample_importance``: new depths (N, 1, R, n_importance) from the coarse weights.

    depths (N, 1, R, S) sorted coarse depths; weights (N, 1, R, S-1) from :func:`march`.
    """
    n, _, r, s = depths.shape
    z = depths.reshape(n * r, s).float()
    w = weights.reshape(n * r, 1, s - 1).float()
    w = F.max_pool1d(w, 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1).squeeze(1) + 0.01
    z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
    out = sample_pdf(z_mid, w[:, 1:-1], n_importance, generator=generator)
    return out.reshape(n, 1, r, n_importance).to(depths.dtype)


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, eps: float = 1e-5,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverse-CDF sampling (NeRF / EG3D): bin edges (B, >K), weights (B, K) -> (B, n_samples)."""
    b, k = weights.shape
    weights = weights + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = torch.rand(b, n_samples, device=bins.device, generator=generator).contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = (inds - 1).clamp_min(0)
    above = inds.clamp_max(k)
    idx = torch.stack([below, above], -1).view(b, 2 * n_samples)
    cdf_g = torch.gather(cdf, 1, idx).view(b, n_samples, 2)
    bins_g = torch.gather(bins, 1, idx).view(b, n_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


class ImportanceRenderer(nn.Module):
    """Renders tri-planes along given rays. Sampling knobs are plain attributes."""

    def __init__(self, decoder: OSGDecoder, depth_samples: int, importance_samples: int, ray_start: float,
                 ray_end: float, box_warp: float = 1.0, density_noise: float = 0.0, white_back: bool = False):
        super().__init__()
        self.decoder = decoder
        self.depth_samples, self.importance_samples = depth_samples, importance_samples
        self.ray_start, self.ray_end, self.box_warp = ray_start, ray_end, box_warp
        self.density_noise, self.white_back = density_noise, white_back

    def run_model(self, planes: torch.Tensor, points: torch.Tensor) -> DecoderOutput:
        """Decode at points (N, A, B, 3) -> DecoderOutput with (N, *, A, B) tensors.

        Training-mode renders may take the compiled CPU ops (where the process enabled them);
        eval-mode renders never do, so inference gives the same bytes in every process.
        """
        compiled = self.training
        feats = sample_triplane(planes, points, self.box_warp, reduce="sum", compiled=compiled)
        out = self.decoder(feats, input_scale=1.0 / 3.0, compiled=compiled)
        if self.density_noise > 0 and self.training:
            out.sigma = out.sigma + torch.randn_like(out.sigma) * self.density_noise
        return out

    def forward(self, planes: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor,
                resolution: int) -> RenderOutput:
        """planes (N, 3, C, H, W); origins/directions (N, R, 3) with R = resolution**2."""
        n, r, _ = origins.shape
        if r != resolution * resolution:
            raise ValueError(f"got {r} rays for a {resolution}x{resolution} render")
        dtype = planes.dtype
        o = origins.to(dtype)[:, :, None, :]
        d = directions.to(dtype)[:, :, None, :]
        depths_c = stratified_depths(n, r, self.depth_samples, self.ray_start, self.ray_end, origins.device,
                                     torch.float32).to(dtype)
        coarse = self.run_model(planes, o + depths_c[:, 0, :, :, None] * d)
        if self.importance_samples > 0:
            with torch.no_grad():  # the coarse weights only steer sampling (EG3D never backprops them)
                w_c, _ = march(coarse.sigma.detach(), depths_c)
            depths_f = importance_depths(depths_c, w_c, self.importance_samples)
            fine = self.run_model(planes, o + depths_f[:, 0, :, :, None] * d)
            depths, order = torch.sort(torch.cat([depths_c, depths_f], -1), dim=-1)
            sigmas = torch.gather(torch.cat([coarse.sigma, fine.sigma], -1), -1, order)
            weights, depth = march(sigmas, depths)
            # Per-sample weights back in unsorted (coarse, fine) order: the colours are then
            # composited where they are, without concatenating and re-sorting all C channels.
            v = torch.zeros_like(sigmas).scatter(-1, order, sample_weights(weights))
            sc = self.depth_samples
            unit = (coarse.unit * v[..., :sc]).sum(-1) + (fine.unit * v[..., sc:]).sum(-1)
        else:
            weights, depth = march(coarse.sigma, depths_c)
            unit = (coarse.unit * sample_weights(weights)).sum(-1)
        weight_total = weights.sum(-1)
        feats = unit * _SIG_SCALE - _SIG_SHIFT * weight_total  # the widened sigmoid, after compositing
        if self.white_back:
            feats = feats + 1 - weight_total
        feats = feats * 2 - 1
        h = w_ = resolution
        return RenderOutput(features=feats.reshape(n, -1, h, w_), depth=depth.reshape(n, 1, h, w_),
                            weight_sum=weight_total.reshape(n, 1, h, w_))
