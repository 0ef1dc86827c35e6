"""One G + D optimisation step in plain PyTorch (no Ray / DeepSpeed).

:class:`GANTrainer` owns G, D, the EMA copy, one optimiser engine per network
(with StyleGAN2's lazy-regularisation lr/beta correction) and the image
counter. ``step(real_img, real_c)`` runs Gmain, [Greg], Dmain, [Dreg], each
its own optimiser step, then updates the EMA.

Engines are anything with ``module``, ``backward(loss)`` and ``step()``: the
default :class:`avatar3d.gan.optim.PlainEngine` (torch Adam, all-reduce when a
process group is up), or the training system's DeepSpeed engine passed in as
``engine_factory``. The losses call ``engine.module`` directly and the other
network is frozen in each phase, which is what lets two DeepSpeed engines
share one graph.
"""
from __future__ import annotations

from typing import Callable

import torch

from avatar3d.gan.config import GANConfig
from avatar3d.gan.discriminator import DualDiscriminator
from avatar3d.gan.ema import ema_beta, make_ema, update_ema
from avatar3d.gan.generator import TriPlaneGenerator
from avatar3d.gan.loss import GANLoss, LossStats
from avatar3d.gan.optim import OptimizerSpec, PlainEngine


def build_discriminator(cfg: GANConfig) -> DualDiscriminator:
    return DualDiscriminator(cfg.d_label_dim, cfg.output_resolution, cfg.d_channel_base, cfg.d_channel_max,
                             cfg.d_mapping_layers, cfg.mbstd_group_size, cfg.conv_clamp)


def optimizer_specs(cfg: GANConfig) -> tuple[OptimizerSpec, OptimizerSpec]:
    """Adam settings of G and D, lazily regularised where the regulariser is on."""
    g_int = cfg.density_reg_interval if cfg.density_reg > 0 else None
    d_int = cfg.r1_interval if cfg.r1_gamma > 0 else None
    return (OptimizerSpec(cfg.lr_g, cfg.betas, cfg.adam_eps, g_int),
            OptimizerSpec(cfg.lr_d, cfg.betas, cfg.adam_eps, d_int))


EngineFactory = Callable[[torch.nn.Module, OptimizerSpec], object]


class GANTrainer:
    def __init__(self, cfg: GANConfig, G: TriPlaneGenerator | None = None, D: DualDiscriminator | None = None,
                 use_ema: bool = True, generator: torch.Generator | None = None,
                 engine_factory: EngineFactory | None = None, world_size: int = 1,
                 device: str | torch.device = "cpu", pose_generator: torch.Generator | None = None):
        self.cfg = cfg
        G = (G if G is not None else TriPlaneGenerator(cfg)).to(device)
        D = (D if D is not None else build_discriminator(cfg)).to(device)
        # The EMA copy is taken before any engine wraps G: same weights, never optimised.
        self.G_ema = make_ema(G) if use_ema else None
        spec_G, spec_D = optimizer_specs(cfg)
        factory = engine_factory or PlainEngine
        self.G_engine = factory(G, spec_G)
        self.D_engine = factory(D, spec_D)
        self.G, self.D = self.G_engine.module, self.D_engine.module
        # Draws of the coarse-to-fine selector; saved with the resume state.
        self.pose_generator = pose_generator if pose_generator is not None else generator
        self.loss = GANLoss(self.G, self.D, cfg, generator=self.pose_generator)
        self.world_size = world_size
        self.batch_idx = 0
        self.cur_nimg = 0

    @property
    def opt_G(self) -> torch.optim.Optimizer:
        return self.G_engine.optimizer

    @property
    def opt_D(self) -> torch.optim.Optimizer:
        return self.D_engine.optimizer

    def _phase(self, name: str, engine, real_img, real_c, z, c, gain) -> LossStats:
        other = self.D if engine.module is self.G else self.G
        engine.module.requires_grad_(True)
        other.requires_grad_(False)
        loss, stats = self.loss.phase_loss(name, real_img, real_c, z, c, gain, self.cur_nimg)
        if loss is not None:
            engine.backward(loss)
            engine.step()
        return stats

    def step(self, real_img: torch.Tensor, real_c: torch.Tensor, gen_c: torch.Tensor | None = None) -> LossStats:
        """One iteration on this process's batch of real images (N, 3, R, R) in [-1, 1] with cameras (N, 25)."""
        cfg = self.cfg
        n = real_img.shape[0]
        if real_img.shape[-1] != cfg.output_resolution:
            raise ValueError(f"real images must be {cfg.output_resolution}px, got {tuple(real_img.shape)}")
        dev = real_img.device
        if gen_c is None:  # generator cameras drawn from the data's cameras, as EG3D does
            gen_c = real_c[torch.randperm(n, device=dev)]
        stats: LossStats = {}
        z = torch.randn(n, cfg.z_dim, device=dev)
        stats.update(self._phase("Gmain", self.G_engine, real_img, real_c, z, gen_c, 1.0))
        if cfg.density_reg > 0 and self.batch_idx % cfg.density_reg_interval == 0:
            z = torch.randn(n, cfg.z_dim, device=dev)
            stats.update(self._phase("Greg", self.G_engine, real_img, real_c, z, gen_c,
                                     float(cfg.density_reg_interval)))
        z = torch.randn(n, cfg.z_dim, device=dev)
        stats.update(self._phase("Dmain", self.D_engine, real_img, real_c, z, gen_c, 1.0))
        if cfg.r1_gamma > 0 and self.batch_idx % cfg.r1_interval == 0:
            stats.update(self._phase("Dreg", self.D_engine, real_img, real_c, z, gen_c,
                                     float(cfg.r1_interval)))
        self.G.requires_grad_(True)
        self.D.requires_grad_(True)
        # Images seen by all processes together: the EMA half-life and the schedules count those.
        global_n = n * self.world_size
        self.cur_nimg += global_n
        self.batch_idx += 1
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, ema_beta(self.cur_nimg, global_n, cfg.ema_kimg, cfg.ema_rampup))
            self.G_ema.neural_rendering_resolution = cfg.neural_resolution_at(self.cur_nimg)
        self.G.neural_rendering_resolution = cfg.neural_resolution_at(self.cur_nimg)
        return stats
