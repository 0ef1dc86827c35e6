"""Every knob of the tri-plane GAN in one dataclass, with the ``tiny`` and ``paper`` presets.

Values follow EG3D's FFHQ-512 recipe (docs/method.md sections 3-5) unless marked
"ours": the ray range [2.0, 3.4] and the pivot at the origin cover a full 360
degree head; the coarse-to-fine thresholds are ours too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from avatar3d.scene.pose_bins import PoseBins

D_MODES = ("fine", "coarse", "coarse_to_fine")


@dataclass(frozen=True)
class GANConfig:
    # --- latent space and mapping -------------------------------------------------
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25                      # EG3D camera label (16 cam2world + 9 intrinsics)
    mapping_layers: int = 2              # EG3D uses 2 (StyleGAN2 uses 8)
    pose_conditioning: bool = True       # "generator pose conditioning": c -> mapping
    gpc_swap_prob: float = 0.5           # prob. of conditioning on another sample's camera
    gpc_fade_kimg: float = 1000.0        # swap prob. fades from 1 to gpc_swap_prob
    # --- tri-plane synthesis (StyleGAN2 backbone) ---------------------------------
    plane_resolution: int = 256
    plane_channels: int = 32
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    # --- neural rendering ---------------------------------------------------------
    neural_rendering_resolution: int = 64          # initial
    neural_rendering_resolution_final: int | None = 128
    neural_rendering_resolution_fade_kimg: float = 1000.0
    depth_samples: int = 48                        # stratified samples per ray
    importance_samples: int = 48                   # importance samples per ray
    ray_start: float = 2.0                         # ours (360 deg heads at r = 2.7)
    ray_end: float = 3.4
    box_warp: float = 1.0                          # planes span [-box/2, box/2]^3
    decoder_hidden: int = 64
    decoder_output_dim: int = 32                   # features; the first 3 are colour
    density_noise: float = 0.0
    white_back: bool = False
    # --- super-resolution ---------------------------------------------------------
    output_resolution: int = 512
    sr_input_resolution: int = 128                 # raw render resized to this first
    sr_channels: tuple[int, int] = (256, 128)      # EG3D's 8XDC
    sr_antialias: bool = True
    sr_noise_mode: str = "none"
    # --- discriminator ------------------------------------------------------------
    d_channel_base: int = 32768
    d_channel_max: int = 512
    d_mapping_layers: int = 8
    mbstd_group_size: int = 4
    d_mode: str = "coarse_to_fine"
    fine_yaw_max: float = 45.0          # ours: |yaw| <= this -> "reliable" view
    p_fine_reliable: float = 0.9        # ours
    p_fine_other: float = 0.2           # ours
    pose_bins: PoseBins = field(default_factory=PoseBins)
    # --- losses and optimisation ---------------------------------------------------
    r1_gamma: float = 1.0
    r1_interval: int = 16
    density_reg: float = 0.25
    density_reg_interval: int = 4
    density_reg_p_dist: float = 0.004
    blur_init_sigma: float = 10.0
    blur_fade_kimg: float = 200.0
    lr_g: float = 0.0025
    lr_d: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05

    def __post_init__(self):
        if self.d_mode not in D_MODES:
            raise ValueError(f"d_mode={self.d_mode!r} is not one of {D_MODES}")
        for name in ("plane_resolution", "output_resolution", "sr_input_resolution"):
            v = getattr(self, name)
            if v < 4 or v & (v - 1):
                raise ValueError(f"{name}={v} must be a power of two >= 4")
        ratio = self.output_resolution // self.sr_input_resolution
        if ratio not in (2, 4) or ratio * self.sr_input_resolution != self.output_resolution:
            raise ValueError(f"output_resolution / sr_input_resolution must be 2 or 4, got "
                             f"{self.output_resolution}/{self.sr_input_resolution}")
        if self.ray_end <= self.ray_start:
            raise ValueError(f"ray_end={self.ray_end} must exceed ray_start={self.ray_start}")
        if self.depth_samples < 2:
            raise ValueError(f"depth_samples={self.depth_samples}: need at least 2 stratified samples")
        if self.importance_samples < 0:
            raise ValueError(f"importance_samples={self.importance_samples} must be >= 0")
        if not 0.0 <= self.p_fine_reliable <= 1.0 or not 0.0 <= self.p_fine_other <= 1.0:
            raise ValueError("p_fine_reliable and p_fine_other are probabilities: pass values in [0, 1]")
        if self.decoder_output_dim < 3:
            raise ValueError(f"decoder_output_dim={self.decoder_output_dim} must be >= 3 (rgb first)")
        for name in ("lr_g", "lr_d"):  # 0 is allowed: a frozen network is a control run (evaluation/gan)
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a number >= 0 (e.g. 0.0025)")

    # --- derived -------------------------------------------------------------------
    @property
    def d_label_dim(self) -> int:
        """Size of the discriminator's pose label [fine ; coarse]."""
        return self.pose_bins.label_dim

    def neural_resolution_at(self, cur_nimg: float) -> int:
        """Neural rendering resolution after ``cur_nimg`` images (EG3D's linear fade, rounded)."""
        final = self.neural_rendering_resolution_final
        if final is None or final == self.neural_rendering_resolution:
            return self.neural_rendering_resolution
        alpha = min(cur_nimg / max(self.neural_rendering_resolution_fade_kimg * 1e3, 1e-8), 1.0)
        return int(round(self.neural_rendering_resolution * (1 - alpha) + final * alpha))

    # --- presets ---------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides) -> "GANConfig":
        """EG3D FFHQ-512 sizes: 256^2 planes, neural 64 -> 128, output 512."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "GANConfig":
        """CPU-sized: 32^2 planes, neural 32, output 64 (tests, demo, learning benchmark)."""
        base = dict(
            z_dim=64, w_dim=64, plane_resolution=32, channel_base=2048, channel_max=64,
            neural_rendering_resolution=32, neural_rendering_resolution_final=None,
            depth_samples=24, importance_samples=24, output_resolution=64, sr_input_resolution=32,
            sr_channels=(32, 16), d_channel_base=2048, d_channel_max=64, d_mapping_layers=2,
            r1_gamma=1.0, blur_fade_kimg=20.0, gpc_fade_kimg=20.0, ema_kimg=0.5,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides) -> "GANConfig":
        if name not in ("tiny", "paper"):
            raise ValueError(f"unknown GAN preset {name!r}: pass 'tiny' or 'paper'")
        return getattr(cls, name)(**overrides)

    def replace(self, **changes) -> "GANConfig":
        return dataclasses.replace(self, **changes)

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, PoseBins):
                v = dataclasses.asdict(v)
                v["pitch_range"] = list(v["pitch_range"])
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GANConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GANConfig fields {sorted(unknown)}; valid fields: {sorted(names)}")
        kw = dict(d)
        if "pose_bins" in kw and isinstance(kw["pose_bins"], dict):
            pb = dict(kw["pose_bins"])
            pb["pitch_range"] = tuple(pb.get("pitch_range", (-30.0, 30.0)))
            kw["pose_bins"] = PoseBins(**pb)
        for k in ("sr_channels", "betas"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)
