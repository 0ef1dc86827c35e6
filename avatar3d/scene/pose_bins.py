"""Fine and coarse pose labels for the coarse-to-fine discriminator (docs/method.md section 1, 4).

A pose label is a one-hot yaw bin followed by a one-hot pitch bin. Yaw bins
are centred on yaw 0 (the front view), so bin 0 is always "front": with 4
coarse bins they are front, left (yaw +90, the subject's left side), back,
right (yaw -90). Pitch bins split ``pitch_range`` evenly; pitches outside it
clamp to the end bins.

Defaults (ours, docs/method.md section 1): fine = 36 yaw bins (10 deg) + 6 pitch bins
(10 deg over [-30, 30]); coarse = 4 yaw bins + 1 pitch bin.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar3d.scene.cameras import wrap_degrees

VIEW_GROUPS = ("front", "side", "back")
COARSE4_NAMES = ("front", "left", "back", "right")


def yaw_bin(yaw_deg, n_bins: int) -> np.ndarray:
    """Index of the yaw bin (bins of 360/n degrees centred on 0, 360/n, ...)."""
    width = 360.0 / n_bins
    shifted = (np.asarray(yaw_deg, dtype=np.float64) + width / 2.0) % 360.0
    return np.minimum((shifted // width).astype(np.int64), n_bins - 1)


def pitch_bin(pitch_deg, n_bins: int, pitch_range=(-30.0, 30.0)) -> np.ndarray:
    """Index of the pitch bin: ``n_bins`` equal bins over ``pitch_range``, clamped."""
    lo, hi = pitch_range
    frac = (np.asarray(pitch_deg, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(np.floor(frac * n_bins), 0, n_bins - 1).astype(np.int64)


def view_group(yaw_deg, front_max: float = 45.0, back_min: float = 135.0):
    """'front' for |yaw| <= front_max, 'back' for |yaw| >= back_min, else 'side'.

    Used by view-aware prompts, per-view FID and sample grids. Scalar in ->
    str out; array in -> array of str.
    """
    a = np.abs(wrap_degrees(yaw_deg))
    out = np.where(a <= front_max, "front", np.where(a >= back_min, "back", "side"))
    return str(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class PoseBins:
    """Bin counts for the fine and coarse pose labels."""

    fine_yaw: int = 36
    fine_pitch: int = 6
    coarse_yaw: int = 4
    coarse_pitch: int = 1
    pitch_range: tuple[float, float] = (-30.0, 30.0)

    @property
    def fine_dim(self) -> int:
        return self.fine_yaw + self.fine_pitch

    @property
    def coarse_dim(self) -> int:
        return self.coarse_yaw + self.coarse_pitch

    @property
    def label_dim(self) -> int:
        """Size of the discriminator's pose label [fine ; coarse]."""
        return self.fine_dim + self.coarse_dim

    def fine_bins(self, yaw, pitch):
        """-> (yaw bin, pitch bin) of the fine label."""
        return yaw_bin(yaw, self.fine_yaw), pitch_bin(pitch, self.fine_pitch, self.pitch_range)

    def coarse_bins(self, yaw, pitch):
        """-> (yaw bin, pitch bin) of the coarse label."""
        return yaw_bin(yaw, self.coarse_yaw), pitch_bin(pitch, self.coarse_pitch, self.pitch_range)

    def fine_index(self, yaw, pitch) -> np.ndarray:
        """One integer per view: yaw_bin * fine_pitch + pitch_bin (stored in datasets)."""
        y, p = self.fine_bins(yaw, pitch)
        return y * self.fine_pitch + p

    def coarse_index(self, yaw, pitch) -> np.ndarray:
        y, p = self.coarse_bins(yaw, pitch)
        return y * self.coarse_pitch + p

    def fine_onehot(self, fine_index) -> np.ndarray:
        """(..., fine_dim) from :meth:`fine_index` values."""
        return _two_hot(np.asarray(fine_index), self.fine_yaw, self.fine_pitch)

    def coarse_onehot(self, coarse_index) -> np.ndarray:
        """(..., coarse_dim) from :meth:`coarse_index` values."""
        return _two_hot(np.asarray(coarse_index), self.coarse_yaw, self.coarse_pitch)

    def label(self, yaw, pitch) -> np.ndarray:
        """The full discriminator pose label [fine ; coarse] (..., label_dim), both parts set."""
        return np.concatenate(
            [self.fine_onehot(self.fine_index(yaw, pitch)), self.coarse_onehot(self.coarse_index(yaw, pitch))],
            axis=-1,
        )


def _two_hot(index: np.ndarray, n_yaw: int, n_pitch: int) -> np.ndarray:
    yaw_idx, pitch_idx = np.divmod(index.astype(np.int64), n_pitch)
    if np.any(yaw_idx < 0) or np.any(yaw_idx >= n_yaw):
        raise ValueError(f"pose bin index out of range for {n_yaw} yaw x {n_pitch} pitch bins")
    out = np.zeros(index.shape + (n_yaw + n_pitch,), dtype=np.float32)
    np.put_along_axis(out, yaw_idx[..., None], 1.0, axis=-1)
    np.put_along_axis(out, n_yaw + pitch_idx[..., None], 1.0, axis=-1)
    return out
