"""One G + D optimisation step (GANTrainer / GANLoss)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatar3d.gan import GANConfig, GANTrainer
from avatar3d.scene.cameras import camera_label

torch.set_num_threads(1)

MICRO = dict(z_dim=32, w_dim=32, plane_resolution=16, channel_base=512, channel_max=32,
             neural_rendering_resolution=16, output_resolution=32, sr_input_resolution=16,
             depth_samples=8, importance_samples=8, sr_channels=(16, 16), d_channel_base=512, d_channel_max=32,
             blur_init_sigma=0.0, d_mode="fine")


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    c = torch.tensor(camera_label(np.linspace(-150, 150, n), np.zeros(n)), dtype=torch.float32)
    return img, c


def _losses(tr, img, c, z):
    """G and D losses on a fixed batch, with all randomness (ray jitter, noise) re-seeded."""
    with torch.no_grad():
        torch.manual_seed(123)
        ws = tr.G.mapping(z, c)
        gen = tr.G.synthesis(ws, c)
        cond = tr.loss.selector(c)
        fake = tr.D(gen.image, gen.image_raw, cond.label)
        real = tr.D(img, F.interpolate(img, size=16, mode="bilinear", antialias=True), cond.label)
    return F.softplus(-fake).mean().item(), (F.softplus(fake) + F.softplus(-real)).mean().item()


def test_one_step_on_a_fixed_batch_moves_both_losses_the_right_way():
    torch.manual_seed(0)
    cfg = GANConfig.tiny(**MICRO, pose_conditioning=False, r1_gamma=0.0, density_reg=0.0)
    tr = GANTrainer(cfg, use_ema=False)
    img, c = _batch()
    z = torch.randn(4, cfg.z_dim)
    g0, d0 = _losses(tr, img, c, z)
    torch.manual_seed(123)
    tr._phase("Gmain", tr.G_engine, img, c, z, c, 1.0)
    g1, d1 = _losses(tr, img, c, z)
    assert g1 < g0 - 1e-4
    torch.manual_seed(123)
    tr._phase("Dmain", tr.D_engine, img, c, z, c, 1.0)
    g2, d2 = _losses(tr, img, c, z)
    assert d2 < d1 - 1e-4


def test_full_step_runs_every_phase():
    torch.manual_seed(0)
    cfg = GANConfig.tiny(**{**MICRO, "d_mode": "coarse_to_fine"}, ema_kimg=0.001)
    tr = GANTrainer(cfg)
    img, c = _batch()
    g_before = [p.detach().clone() for p in tr.G.parameters()]
    stats = tr.step(img, c)
    for key in ("loss_G", "loss_G_density_reg", "loss_D_fake", "loss_D_real", "loss_D_r1", "frac_fine"):
        assert key in stats and np.isfinite(stats[key]), key
    assert tr.cur_nimg == 4 and tr.batch_idx == 1
    moved = [not torch.equal(a, b) for a, b in zip(g_before, tr.G.parameters())]
    assert sum(moved) > 0.9 * len(moved)
    stats2 = tr.step(img, c)  # lazy regularisers are skipped on the next step
    assert "loss_D_r1" not in stats2 and "loss_G_density_reg" not in stats2


@pytest.mark.parametrize("ema_kimg, ema_rampup, world_size", [(0.003, 0.25, 1), (0.003, None, 1), (0.006, 0.25, 2)])
def test_ema_is_the_documented_lerp_of_old_ema_and_new_weights(ema_kimg, ema_rampup, world_size):
    """G_ema <- G + beta (G_ema - G), beta = 0.5 ** (global batch / min(ema_kimg * 1000, cur_nimg * ema_rampup))
    (avatar3d/gan/ema.py); buffers copied. Two steps: the EMA already differs from G on the second."""
    torch.manual_seed(0)
    cfg = GANConfig.tiny(**MICRO, ema_kimg=ema_kimg, ema_rampup=ema_rampup)
    tr = GANTrainer(cfg, world_size=world_size)  # no process group: world_size only scales the image count
    img, c = _batch()
    betas = []
    for step in (1, 2):
        ema_before = [p.detach().clone() for p in tr.G_ema.parameters()]
        tr.step(img, c)
        nimg = 4 * world_size * step
        half_life = ema_kimg * 1000 if ema_rampup is None else min(ema_kimg * 1000, nimg * ema_rampup)
        beta = 0.5 ** (4 * world_size / half_life)
        betas.append(beta)
        assert tr.cur_nimg == nimg
        for (name, e), old, p in zip(tr.G_ema.named_parameters(), ema_before, tr.G.parameters()):
            expected = beta * old + (1 - beta) * p.detach()
            assert torch.allclose(e, expected, rtol=1e-6, atol=1e-7), (name, (e - expected).abs().max())
        for (name, e), b in zip(tr.G_ema.named_buffers(), tr.G.buffers()):
            assert torch.equal(e, b), name
    # The cases exercise the ramp-up (beta grows with the image count) and the cap (constant beta), never 0.5
    # (where swapping beta and 1 - beta would pass) nor ~0 / ~1 (where the old or the new weights would).
    assert all(0.05 < b < 0.95 and abs(b - 0.5) > 0.05 for b in betas), betas
    assert (betas[1] > betas[0]) == (ema_rampup is not None)


def test_lazy_regularisation_corrects_adam_hyperparameters():
    cfg = GANConfig.tiny(**MICRO)
    tr = GANTrainer(cfg, use_ema=False)
    g = tr.opt_G.param_groups[0]
    assert g["lr"] == pytest.approx(cfg.lr_g * 4 / 5)
    assert g["betas"][1] == pytest.approx(0.99 ** (4 / 5))
    assert tr.opt_D.param_groups[0]["lr"] == pytest.approx(cfg.lr_d * 16 / 17)


def test_schedules_fade():
    cfg = GANConfig.tiny(**{**MICRO, "blur_init_sigma": 10.0}, blur_fade_kimg=1.0, gpc_fade_kimg=1.0)
    tr = GANTrainer(cfg, use_ema=False)
    assert tr.loss.blur_sigma(0) == 10.0 and tr.loss.blur_sigma(500) == 5.0 and tr.loss.blur_sigma(2000) == 0.0
    assert tr.loss.swap_prob(0) == 1.0 and tr.loss.swap_prob(5000) == pytest.approx(cfg.gpc_swap_prob)
    with pytest.raises(ValueError, match="phase"):
        tr.loss.accumulate_gradients("Gboth", *_batch(), torch.zeros(4, 32), _batch()[1], 1.0, 0)
    with pytest.raises(ValueError, match="32px"):
        tr.step(torch.zeros(4, 3, 16, 16), _batch()[1])
