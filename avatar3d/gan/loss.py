"""EG3D's StyleGAN2Loss with the coarse-to-fine pose label (docs/method.md section 5).

Phases, each its own optimiser step, as in StyleGAN2's training loop:
  Gmain  non-saturating loss softplus(-D(G(z)))
  Greg   density regulariser: L1 between raw densities at random points in
         the box and at points jittered by N(0, density_reg_p_dist), times
         ``density_reg``; lazily every ``density_reg_interval`` steps
  Dmain  softplus(D(G(z))) + softplus(-D(x))
  Dreg   R1 = gamma/2 * (|grad_image|^2 + |grad_image_raw|^2) on reals (both
         image groups of the dual discriminator), every ``r1_interval`` steps
Lazy phases are run with ``gain`` = their interval (the caller passes it).

D's 'image' input is blurred with a Gaussian whose sigma fades linearly from
``blur_init_sigma`` to 0 over ``blur_fade_kimg``; the real raw target (the
real image resized to the neural resolution) gets the same blur (EG3D's
blur_raw_target). Generator pose conditioning: the mapping sees the render
camera, or with probability ``swap_prob`` another sample's camera (EG3D's
GPC regularisation), the probability fading from 1 to ``gpc_swap_prob``.

Deviation from EG3D (ours): density-regulariser points are drawn inside the
tri-plane box [-box_warp/2, box_warp/2]^3 rather than [-1, 1]^3, where most
points fall outside the planes and contribute nothing.
"""
from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn.functional as F

from avatar3d.gan.config import GANConfig
from avatar3d.gan.discriminator import DualDiscriminator, resize_raw
from avatar3d.gan.generator import GeneratorOutput, TriPlaneGenerator
from avatar3d.gan.layers import gaussian_blur2d
from avatar3d.gan.pose_label import CoarseToFineSelector

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")


class LossStats(TypedDict, total=False):
    """Scalar losses for logging (Python floats)."""

    loss_G: float
    loss_G_density_reg: float
    loss_D_fake: float
    loss_D_real: float
    loss_D_r1: float
    logits_fake: float
    logits_real: float
    blur_sigma: float
    frac_fine: float


class GANLoss:
    def __init__(self, G: TriPlaneGenerator, D: DualDiscriminator, cfg: GANConfig,
                 selector: CoarseToFineSelector | None = None, generator: torch.Generator | None = None,
                 blur_raw_target: bool = True):
        self.G, self.D, self.cfg = G, D, cfg
        self.selector = selector or CoarseToFineSelector.from_config(cfg)
        self.generator = generator
        self.blur_raw_target = blur_raw_target

    # --- schedules -------------------------------------------------------------------
    def blur_sigma(self, cur_nimg: float) -> float:
        if self.cfg.blur_fade_kimg <= 0:
            return 0.0
        return max(1 - cur_nimg / (self.cfg.blur_fade_kimg * 1e3), 0.0) * self.cfg.blur_init_sigma

    def swap_prob(self, cur_nimg: float) -> float | None:
        if not self.cfg.pose_conditioning:
            return None
        alpha = min(cur_nimg / (self.cfg.gpc_fade_kimg * 1e3), 1.0) if self.cfg.gpc_fade_kimg > 0 else 1.0
        return (1 - alpha) + alpha * self.cfg.gpc_swap_prob

    # --- networks ----------------------------------------------------------------------
    def _conditioning(self, c: torch.Tensor, swap_prob: float | None) -> torch.Tensor | None:
        if swap_prob is None:
            return None
        swapped = torch.roll(c, 1, 0)
        pick = torch.rand(c.shape[0], 1, device=c.device) < swap_prob
        return torch.where(pick, swapped, c)

    def run_G(self, z, c, swap_prob, resolution, update_emas=False) -> GeneratorOutput:
        ws = self.G.mapping(z, self._conditioning(c, swap_prob), update_emas=update_emas)
        return self.G.synthesis(ws, c, neural_rendering_resolution=resolution)

    def run_D(self, image, image_raw, c_d, blur_sigma) -> torch.Tensor:
        if blur_sigma > 0:
            image = gaussian_blur2d(image, blur_sigma)
        return self.D(image, image_raw, c_d)

    # --- phases --------------------------------------------------------------------------
    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: float) -> LossStats:
        """Run one phase's forward + backward (gradients accumulate into .grad). Returns scalars."""
        loss, stats = self.phase_loss(phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg)
        if loss is not None:
            loss.backward()
        return stats

    def phase_loss(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor, gen_z: torch.Tensor,
                   gen_c: torch.Tensor, gain: float, cur_nimg: float) -> tuple[torch.Tensor | None, LossStats]:
        """One phase's forward: the loss to backpropagate (already times ``gain``; None if the phase is off)
        and its scalars. The caller backpropagates, e.g. through a DeepSpeed engine."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        cfg = self.cfg
        stats: LossStats = {}
        blur_sigma = self.blur_sigma(cur_nimg)
        swap_prob = self.swap_prob(cur_nimg)
        resolution = cfg.neural_resolution_at(cur_nimg)
        stats["blur_sigma"] = blur_sigma

        if phase == "Gmain":
            gen = self.run_G(gen_z, gen_c, swap_prob, resolution)
            cond = self.selector(gen_c, self.generator)
            logits = self.run_D(gen.image, gen.image_raw, cond.label, blur_sigma)
            loss = F.softplus(-logits).mean()
            total = loss.mul(gain)
            stats.update(loss_G=loss.item(), logits_fake=logits.mean().item(),
                         frac_fine=cond.use_fine.float().mean().item())

        elif phase == "Greg":
            if cfg.density_reg <= 0:
                return None, stats
            ws = self.G.mapping(gen_z, self._conditioning(gen_c, swap_prob))
            planes = self.G.synthesize_planes(ws)
            n = ws.shape[0]
            pts = (torch.rand(n, 1000, 3, device=ws.device) - 0.5) * cfg.box_warp
            pts = torch.cat([pts, pts + torch.randn_like(pts) * cfg.density_reg_p_dist], 1)
            sigma = self.G.sample_density(planes, pts).sigma
            loss = F.l1_loss(sigma[:, :1000], sigma[:, 1000:]) * cfg.density_reg
            total = loss.mul(gain)
            stats["loss_G_density_reg"] = loss.item()

        elif phase == "Dmain":
            # G is not optimised in this phase: no graph through it (EG3D freezes it likewise).
            with torch.no_grad():
                gen = self.run_G(gen_z, gen_c, swap_prob, resolution, update_emas=True)
            cond = self.selector(gen_c, self.generator)
            logits = self.run_D(gen.image, gen.image_raw, cond.label, blur_sigma)
            loss_fake = F.softplus(logits).mean()
            real_raw = self._real_raw(real_img, resolution, blur_sigma)
            cond_r = self.selector(real_c, self.generator)
            logits_r = self.run_D(real_img, real_raw, cond_r.label, blur_sigma)
            loss_real = F.softplus(-logits_r).mean()
            # One backward for both terms (same gradient as two): engines step once per backward.
            total = (loss_fake + loss_real).mul(gain)
            stats.update(loss_D_fake=loss_fake.item(), loss_D_real=loss_real.item(),
                         logits_fake=logits.mean().item(), logits_real=logits_r.mean().item())

        elif phase == "Dreg":
            if cfg.r1_gamma <= 0:
                return None, stats
            img = real_img.detach().requires_grad_(True)
            raw = self._real_raw(real_img, resolution, blur_sigma).detach().requires_grad_(True)
            cond_r = self.selector(real_c, self.generator)
            logits = self.run_D(img, raw, cond_r.label, blur_sigma)
            g_img, g_raw = torch.autograd.grad(logits.sum(), [img, raw], create_graph=True)
            penalty = g_img.square().sum([1, 2, 3]) + g_raw.square().sum([1, 2, 3])
            loss = (penalty * (cfg.r1_gamma / 2)).mean()
            total = loss.mul(gain)
            stats["loss_D_r1"] = loss.item()
        return total, stats

    def _real_raw(self, real_img: torch.Tensor, resolution: int, blur_sigma: float) -> torch.Tensor:
        raw = resize_raw(real_img, resolution)
        if self.blur_raw_target and blur_sigma > 0:
            raw = gaussian_blur2d(raw, blur_sigma)
        return raw
