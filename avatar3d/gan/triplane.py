"""Tri-plane feature lookup with EG3D's corrected plane axes.

Plane k holds features over two world axes, in ``grid_sample`` order (u ->
plane width, v -> plane height):

    plane 0: XY  (u = x, v = y)
    plane 1: XZ  (u = x, v = z)
    plane 2: ZY  (u = z, v = y)   -- the "YZ" plane

EG3D's first release built the third plane from a matrix that projected to
(z, x) again, so two planes saw XZ and none saw YZ; its later
``generate_planes`` fix gives the axes above. World points are scaled by
2 / box_warp so the planes span [-box_warp/2, box_warp/2]^3; outside, the
zero padding of ``grid_sample`` returns zero features.

The features of the three planes are averaged (EG3D's decoder does the mean).
Two paths compute the same sum of bilinear lookups (up to float rounding):

* one ``grid_sample`` per plane on a view of the plane tensor, summed as it
  goes: no (N*3, C, ...) stack to copy, reduce and (in the backward)
  re-expand. The default, and the only path of every inference render;
* with ``compiled=True`` (the renderer passes it for training-mode renders), in
  a process that called :func:`avatar3d.native.enable_training_ops`, on CPU
  float32 with no gradient wanted for the points: a compiled kernel that reads
  and writes each pixel's features as one contiguous row (the channels-last
  synthesis output is read in place; other layouts are copied once); 3x faster
  forward and 3-5x faster backward than ``grid_sample`` on the renderer's
  shapes, where ``grid_sample``'s backward was a third of a render's forward +
  backward. See :mod:`avatar3d.native` for why inference never takes it.

Channels stay first in the result, (N, C, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from avatar3d import native

# (u, v) world-axis indices of each plane: XY, XZ, ZY.
PLANE_AXES = ((0, 1), (0, 2), (2, 1))


def sample_triplane(planes: torch.Tensor, points: torch.Tensor, box_warp: float = 1.0,
                    reduce: str = "mean", compiled: bool = False) -> torch.Tensor:
    """Mean (or, with ``reduce="sum"``, sum) of the tri-plane features at world points.

    planes: (N, 3, C, H, W); points: (N, A, B, 3) (any two point dims, e.g. rays x samples).
    Returns (N, C, A, B) in the planes' dtype. The renderer takes the sum and folds the
    1/3 into the decoder's first layer, saving a full pass (and its backward) per lookup.
    ``compiled`` allows the compiled kernel where this process enabled it (training only).
    """
    if planes.ndim != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must have shape (N, 3, C, H, W), got {tuple(planes.shape)}")
    if points.ndim != 4 or points.shape[-1] != 3 or points.shape[0] != planes.shape[0]:
        raise ValueError(f"points must have shape (N={planes.shape[0]}, A, B, 3), got {tuple(points.shape)}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    coords = points.to(planes.dtype) * (2.0 / box_warp)
    ops = _native_ops(planes, coords) if compiled else None
    if ops is not None:
        n, a, b = coords.shape[:3]
        total = _NativeLookup.apply(planes, coords.reshape(n, a * b, 3).contiguous(), ops).view(n, -1, a, b)
        return total if reduce == "sum" else total / 3.0
    total = None
    for k, (u, v) in enumerate(PLANE_AXES):
        grid = torch.stack([coords[..., u], coords[..., v]], -1)  # (N, A, B, 2)
        feats = F.grid_sample(planes[:, k], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        total = feats if total is None else total + feats
    return total if reduce == "sum" else total / 3.0


def _native_ops(planes: torch.Tensor, coords: torch.Tensor):
    """The compiled kernel where it applies: enabled in this process, CPU float32, no gradient
    wanted for the points."""
    if planes.device.type != "cpu" or planes.dtype != torch.float32 or coords.requires_grad:
        return None
    return native.training_ops()


def _kernel_layout(planes: torch.Tensor) -> torch.Tensor:
    """planes (N, 3, C, H, W) with each pixel's C features contiguous, as the kernel reads them:
    the channels-last synthesis output as it is, anything else through one copy."""
    s = planes.stride()
    if (s[2] == 1 or planes.shape[2] == 1) and s[3] == planes.shape[4] * s[4] and s[4] >= planes.shape[2]:
        return planes
    return planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class _NativeLookup(torch.autograd.Function):
    """Plane sum at points (N, P, 3) -> (N, C, P); gradient to the planes only."""

    @staticmethod
    def forward(ctx, planes, coords, ops):
        planes = _kernel_layout(planes)
        ctx.save_for_backward(coords)
        ctx.ops, ctx.layout = ops, (planes.shape, planes.stride())
        return ops.forward(planes, coords)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (coords,) = ctx.saved_tensors
        g = torch.empty_strided(*ctx.layout, dtype=grad.dtype).zero_()  # the layout the kernel read
        ctx.ops.backward(grad.contiguous(), coords, g)
        return g, None, None
