"""The EG3D tri-plane generator (docs/method.md section 3).

    z, c_cond --mapping--> w --StyleGAN2 synthesis--> 3 x 32-channel planes
    planes + camera c --volume rendering--> raw features (neural resolution)
    raw features + w --super-resolution--> image (output resolution)

Public API used by the other stages (prior, evaluation, meshes):
``mapping``, ``synthesize_planes``, ``render``, ``synthesis``,
``sample_density``, ``forward``. Camera rays come from
:func:`avatar3d.scene.cameras.camera_rays` (EG3D's RaySampler convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avatar3d.gan.config import GANConfig
from avatar3d.gan.mapping import MappingNetwork
from avatar3d.gan.renderer import ImportanceRenderer, OSGDecoder
from avatar3d.gan.superres import SuperResolution
from avatar3d.gan.synthesis import SynthesisNetwork
from avatar3d.scene.cameras import camera_rays


@dataclass
class GeneratorOutput:
    image: torch.Tensor        # (N, 3, out, out) final image in [-1, 1]
    image_raw: torch.Tensor    # (N, 3, nr, nr) RGB of the neural render
    image_depth: torch.Tensor  # (N, 1, nr, nr) expected depth along each ray
    image_mask: torch.Tensor   # (N, 1, nr, nr) accumulated opacity (silhouette)
    planes: torch.Tensor | None = None  # (N, 3, C, P, P), the tri-plane that was rendered


@dataclass
class DensitySample:
    """Decoder output at query points, channels last (EG3D's ``sample`` layout)."""

    sigma: torch.Tensor     # (N, M, 1) raw density; the renderer uses softplus(sigma - 1)
    features: torch.Tensor  # (N, M, C); the first 3 channels are colour in [0, 1]

    @property
    def rgb(self) -> torch.Tensor:
        return self.features[..., :3]

    @property
    def density(self) -> torch.Tensor:
        return F.softplus(self.sigma - 1.0)


class TriPlaneGenerator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.plane_channels = cfg.plane_channels
        self.backbone = SynthesisNetwork(cfg.w_dim, cfg.plane_resolution, 3 * cfg.plane_channels,
                                         cfg.channel_base, cfg.channel_max, cfg.conv_clamp)
        self.num_ws = self.backbone.num_ws
        # Without generator pose conditioning the mapping sees no camera at all.
        self.mapping_net = MappingNetwork(cfg.z_dim, cfg.c_dim if cfg.pose_conditioning else 0, cfg.w_dim,
                                          self.num_ws, cfg.mapping_layers)
        self.decoder = OSGDecoder(cfg.plane_channels, cfg.decoder_hidden, cfg.decoder_output_dim)
        self.renderer = ImportanceRenderer(self.decoder, cfg.depth_samples, cfg.importance_samples, cfg.ray_start,
                                           cfg.ray_end, cfg.box_warp, cfg.density_noise, cfg.white_back)
        self.superresolution = SuperResolution(cfg.decoder_output_dim, cfg.w_dim, cfg.sr_input_resolution,
                                               cfg.output_resolution, cfg.sr_channels, cfg.sr_antialias,
                                               cfg.sr_noise_mode, cfg.conv_clamp)
        self.neural_rendering_resolution = cfg.neural_rendering_resolution

    # --- stages ---------------------------------------------------------------------
    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """z (N, z_dim), conditioning camera c (N, 25) -> ws (N, num_ws, w_dim)."""
        if self.mapping_net.c_dim == 0:
            c = None
        elif c is None:
            raise ValueError("this generator uses pose conditioning: pass c (N, 25), e.g. the render camera")
        return self.mapping_net(z, c, truncation_psi, truncation_cutoff, update_emas)

    def synthesize_planes(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """ws -> tri-plane (N, 3, C, P, P) in XY, XZ, ZY order."""
        # A view whatever the memory format: on CPU the channels-last output keeps each
        # pixel's 32 features of a plane contiguous, which is how the lookup reads them.
        planes = self.backbone(ws, noise_mode=noise_mode)
        return planes.view(planes.shape[0], 3, self.plane_channels, planes.shape[-2], planes.shape[-1])

    def render(self, planes: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
               neural_rendering_resolution: int | None = None) -> GeneratorOutput:
        """Render the planes from cameras c (N, 25) and super-resolve."""
        if c.ndim != 2 or c.shape[1] != 25:
            raise ValueError(f"c must be camera labels of shape (N, 25), got {tuple(c.shape)}")
        res = neural_rendering_resolution or self.neural_rendering_resolution
        origins, directions = camera_rays(c.float(), res)
        out = self.renderer(planes, origins, directions, res)
        rgb = out.features[:, :3]
        image = self.superresolution(rgb, out.features, ws)
        return GeneratorOutput(image=image, image_raw=rgb, image_depth=out.depth, image_mask=out.weight_sum,
                               planes=planes)

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, neural_rendering_resolution: int | None = None,
                  noise_mode: str = "random") -> GeneratorOutput:
        return self.render(self.synthesize_planes(ws, noise_mode), ws, c, neural_rendering_resolution)

    def sample_density(self, planes: torch.Tensor, points: torch.Tensor) -> DensitySample:
        """Decoder output at world points (N, M, 3)."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape (N, M, 3), got {tuple(points.shape)}")
        out = self.renderer.run_model(planes, points[:, :, None, :])  # (N, *, M, 1)
        return DensitySample(sigma=out.sigma[..., 0].transpose(1, 2), features=out.features[..., 0].transpose(1, 2))

    def forward(self, z: torch.Tensor, c: torch.Tensor, c_cond: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                neural_rendering_resolution: int | None = None, noise_mode: str = "random",
                update_emas: bool = False) -> GeneratorOutput:
        """z + render camera c (+ conditioning camera c_cond, default c) -> GeneratorOutput."""
        ws = self.mapping(z, c if c_cond is None else c_cond, truncation_psi, truncation_cutoff, update_emas)
        return self.synthesis(ws, c, neural_rendering_resolution, noise_mode)
