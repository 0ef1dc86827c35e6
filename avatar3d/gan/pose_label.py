"""Coarse-to-fine pose conditioning of the discriminator (docs/method.md section 4).

Each image (real or generated) gets c_D = [c_fine ; c_coarse], the one-hot
pose labels of :class:`avatar3d.scene.pose_bins.PoseBins`, with exactly one
part zeroed. The fine part is kept with probability

    p_fine_reliable   if |yaw| <= fine_yaw_max  (near-frontal: ControlNet's pose is reliable)
    p_fine_other      otherwise                 (side/back: the pose is often wrong)

in mode ``coarse_to_fine``; always in mode ``fine``; never in mode
``coarse`` (the ablations). Labels are computed in torch from the 25-float
camera so they stay on the batch's device; they equal PoseBins' numpy ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from avatar3d.gan.config import D_MODES
from avatar3d.scene.pose_bins import PoseBins


def yaw_pitch_from_camera(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera labels (N, 25) -> (yaw, elevation) in degrees, from the camera position."""
    t = c[:, :16].reshape(-1, 4, 4)[:, :3, 3].double()
    r = t.norm(dim=-1)
    yaw = torch.rad2deg(torch.atan2(t[:, 0], t[:, 2]))
    pitch = torch.rad2deg(torch.asin((t[:, 1] / r).clamp(-1, 1)))
    return yaw, pitch


def _yaw_bin(yaw: torch.Tensor, n: int) -> torch.Tensor:
    width = 360.0 / n
    return torch.div(torch.remainder(yaw + width / 2.0, 360.0), width, rounding_mode="floor").long().clamp_max(n - 1)


def _pitch_bin(pitch: torch.Tensor, n: int, rng: tuple[float, float]) -> torch.Tensor:
    frac = (pitch - rng[0]) / (rng[1] - rng[0])
    return torch.floor(frac * n).clamp(0, n - 1).long()


def pose_label(yaw: torch.Tensor, pitch: torch.Tensor, bins: PoseBins) -> torch.Tensor:
    """[fine ; coarse] one-hot label (N, bins.label_dim), float32, both parts set."""
    parts = []
    for n_yaw, n_pitch in ((bins.fine_yaw, bins.fine_pitch), (bins.coarse_yaw, bins.coarse_pitch)):
        parts.append(torch.nn.functional.one_hot(_yaw_bin(yaw, n_yaw), n_yaw))
        parts.append(torch.nn.functional.one_hot(_pitch_bin(pitch, n_pitch, bins.pitch_range), n_pitch))
    return torch.cat(parts, -1).float()


@dataclass
class PoseCondition:
    label: torch.Tensor     # (N, label_dim) c_D with one part zeroed per sample
    use_fine: torch.Tensor  # (N,) bool, True where the fine part was kept
    yaw: torch.Tensor       # (N,) degrees


class CoarseToFineSelector:
    """Builds c_D for a batch of cameras (see module docstring)."""

    def __init__(self, bins: PoseBins = PoseBins(), mode: str = "coarse_to_fine", fine_yaw_max: float = 45.0,
                 p_fine_reliable: float = 0.9, p_fine_other: float = 0.2):
        if mode not in D_MODES:
            raise ValueError(f"discriminator mode {mode!r} is not one of {D_MODES}")
        self.bins, self.mode, self.fine_yaw_max = bins, mode, fine_yaw_max
        self.p_fine_reliable, self.p_fine_other = p_fine_reliable, p_fine_other

    @classmethod
    def from_config(cls, cfg) -> "CoarseToFineSelector":
        return cls(cfg.pose_bins, cfg.d_mode, cfg.fine_yaw_max, cfg.p_fine_reliable, cfg.p_fine_other)

    @property
    def label_dim(self) -> int:
        return self.bins.label_dim

    def p_fine(self, yaw: torch.Tensor) -> torch.Tensor:
        """Probability of keeping the fine label for each yaw (degrees)."""
        if self.mode == "fine":
            return torch.ones_like(yaw, dtype=torch.float64)
        if self.mode == "coarse":
            return torch.zeros_like(yaw, dtype=torch.float64)
        wrapped = torch.remainder(yaw.double() + 180.0, 360.0) - 180.0
        reliable = wrapped.abs() <= self.fine_yaw_max
        return torch.where(reliable, torch.full_like(wrapped, self.p_fine_reliable),
                           torch.full_like(wrapped, self.p_fine_other))

    def select(self, yaw: torch.Tensor, pitch: torch.Tensor, generator: torch.Generator | None = None) -> PoseCondition:
        full = pose_label(yaw, pitch, self.bins)
        p = self.p_fine(yaw)
        u = torch.rand(p.shape, generator=generator, dtype=torch.float64, device=generator.device
                       if generator is not None else p.device).to(p.device)
        use_fine = u < p
        fine_mask = torch.zeros(self.bins.label_dim, dtype=torch.bool, device=full.device)
        fine_mask[: self.bins.fine_dim] = True
        keep = torch.where(use_fine[:, None], fine_mask[None], ~fine_mask[None])
        return PoseCondition(label=full * keep, use_fine=use_fine, yaw=yaw)

    def __call__(self, c: torch.Tensor, generator: torch.Generator | None = None) -> PoseCondition:
        """Camera labels (N, 25) -> PoseCondition on c's device."""
        if c.ndim != 2 or c.shape[1] != 25:
            raise ValueError(f"c must be camera labels of shape (N, 25), got {tuple(c.shape)}")
        yaw, pitch = yaw_pitch_from_camera(c)
        out = self.select(yaw, pitch, generator)
        out.label = out.label.to(c.device)
        return out


