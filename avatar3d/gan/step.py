"""One G + D optimisation step in plain PyTorch (no Ray / DeepSpeed).

:class:`GANTrainer` owns G, D, the EMA copy, the Adam optimisers (with the
lazy-regularisation lr/beta correction of StyleGAN2) and the image counter.
``step(real_img, real_c)`` runs Gmain, [Greg], Dmain, [Dreg], each with its
own optimiser step, then updates the EMA. The distributed training loop
(another stage) reuses this, wrapping the modules as it needs.
"""
from __future__ import annotations

import torch

from avatar3d.gan.config import GANConfig
from avatar3d.gan.discriminator import DualDiscriminator
from avatar3d.gan.ema import ema_beta, make_ema, update_ema
from avatar3d.gan.generator import TriPlaneGenerator
from avatar3d.gan.loss import GANLoss, LossStats


def build_discriminator(cfg: GANConfig) -> DualDiscriminator:
    return DualDiscriminator(cfg.d_label_dim, cfg.output_resolution, cfg.d_channel_base, cfg.d_channel_max,
                             cfg.d_mapping_layers, cfg.mbstd_group_size, cfg.conv_clamp)


def make_optimizer(module: torch.nn.Module, lr: float, betas, eps: float, reg_interval: int | None):
    """Adam; with lazy regularisation every k steps, lr *= k/(k+1) and betas **= k/(k+1)."""
    ratio = reg_interval / (reg_interval + 1) if reg_interval else 1.0
    return torch.optim.Adam(module.parameters(), lr=lr * ratio, betas=tuple(b ** ratio for b in betas), eps=eps)


class GANTrainer:
    def __init__(self, cfg: GANConfig, G: TriPlaneGenerator | None = None, D: DualDiscriminator | None = None,
                 use_ema: bool = True, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.G = G if G is not None else TriPlaneGenerator(cfg)
        self.D = D if D is not None else build_discriminator(cfg)
        self.G_ema = make_ema(self.G) if use_ema else None
        g_int = cfg.density_reg_interval if cfg.density_reg > 0 else None
        d_int = cfg.r1_interval if cfg.r1_gamma > 0 else None
        self.opt_G = make_optimizer(self.G, cfg.lr_g, cfg.betas, cfg.adam_eps, g_int)
        self.opt_D = make_optimizer(self.D, cfg.lr_d, cfg.betas, cfg.adam_eps, d_int)
        self.loss = GANLoss(self.G, self.D, cfg, generator=generator)
        self.batch_idx = 0
        self.cur_nimg = 0

    def _phase(self, name, module, opt, real_img, real_c, z, c, gain) -> LossStats:
        other = self.D if module is self.G else self.G
        module.requires_grad_(True)
        other.requires_grad_(False)
        opt.zero_grad(set_to_none=True)
        stats = self.loss.accumulate_gradients(name, real_img, real_c, z, c, gain, self.cur_nimg)
        for p in module.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()
        return stats

    def step(self, real_img: torch.Tensor, real_c: torch.Tensor, gen_c: torch.Tensor | None = None) -> LossStats:
        """One iteration on a batch of real images (N, 3, R, R) in [-1, 1] with cameras (N, 25)."""
        cfg = self.cfg
        n = real_img.shape[0]
        if real_img.shape[-1] != cfg.output_resolution:
            raise ValueError(f"real images must be {cfg.output_resolution}px, got {tuple(real_img.shape)}")
        dev = real_img.device
        if gen_c is None:  # generator cameras drawn from the data's cameras, as EG3D does
            gen_c = real_c[torch.randperm(n, device=dev)]
        stats: LossStats = {}
        z = torch.randn(n, cfg.z_dim, device=dev)
        stats.update(self._phase("Gmain", self.G, self.opt_G, real_img, real_c, z, gen_c, 1.0))
        if cfg.density_reg > 0 and self.batch_idx % cfg.density_reg_interval == 0:
            z = torch.randn(n, cfg.z_dim, device=dev)
            stats.update(self._phase("Greg", self.G, self.opt_G, real_img, real_c, z, gen_c,
                                     float(cfg.density_reg_interval)))
        z = torch.randn(n, cfg.z_dim, device=dev)
        stats.update(self._phase("Dmain", self.D, self.opt_D, real_img, real_c, z, gen_c, 1.0))
        if cfg.r1_gamma > 0 and self.batch_idx % cfg.r1_interval == 0:
            stats.update(self._phase("Dreg", self.D, self.opt_D, real_img, real_c, z, gen_c,
                                     float(cfg.r1_interval)))
        self.cur_nimg += n
        self.batch_idx += 1
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, ema_beta(self.cur_nimg, n, cfg.ema_kimg, cfg.ema_rampup))
            self.G_ema.neural_rendering_resolution = cfg.neural_resolution_at(self.cur_nimg)
        self.G.neural_rendering_resolution = cfg.neural_resolution_at(self.cur_nimg)
        return stats
