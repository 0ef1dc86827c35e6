"""TriPlaneGenerator + DualDiscriminator: shapes, dtypes, gradients, public API."""
import numpy as np
import pytest
import torch

from avatar3d.gan import DensitySample, GANConfig, GeneratorOutput, TriPlaneGenerator, build_discriminator
from avatar3d.scene.cameras import camera_label

torch.set_num_threads(1)

# Smaller than `tiny` so the gradient and dtype tests take a fraction of a second.
MICRO = dict(z_dim=32, w_dim=32, plane_resolution=16, channel_base=512, channel_max=32,
             neural_rendering_resolution=16, output_resolution=32, sr_input_resolution=16,
             depth_samples=8, importance_samples=8, sr_channels=(16, 16), d_channel_base=512, d_channel_max=32)


def cams(yaws, pitch=0.0):
    return torch.tensor(camera_label(np.asarray(yaws, float), np.full(len(yaws), pitch)), dtype=torch.float32)


def test_tiny_preset_shapes_and_dtypes():
    cfg = GANConfig.tiny()
    torch.manual_seed(0)
    G = TriPlaneGenerator(cfg)
    z = torch.randn(2, cfg.z_dim)
    c = cams([0, 150])
    out = G(z, c)
    assert isinstance(out, GeneratorOutput)
    assert out.image.shape == (2, 3, 64, 64)
    assert out.image_raw.shape == (2, 3, 32, 32)
    assert out.image_depth.shape == out.image_mask.shape == (2, 1, 32, 32)
    assert out.planes.shape == (2, 3, 32, 32, 32)
    for t in (out.image, out.image_raw, out.image_depth, out.image_mask):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert out.image_depth.min() >= cfg.ray_start and out.image_mask.max() <= 1.0 + 1e-5
    D = build_discriminator(cfg)
    logits = D(out.image, out.image_raw, torch.zeros(2, cfg.d_label_dim))
    assert logits.shape == (2, 1)


def test_paper_preset_shapes_on_meta_device():
    cfg = GANConfig.paper()
    with torch.device("meta"):
        G = TriPlaneGenerator(cfg)
        D = build_discriminator(cfg)
        z, c = torch.randn(2, 512), torch.randn(2, 25)
        ws = G.mapping(z, c)
        planes = G.synthesize_planes(ws)
        out64 = G.render(planes, ws, c, neural_rendering_resolution=64)
        out128 = G.render(planes, ws, c, neural_rendering_resolution=128)
        logits = D(out128.image, out128.image_raw, torch.randn(2, cfg.d_label_dim))
    assert ws.shape == (2, G.num_ws, 512) and G.num_ws == 14
    assert planes.shape == (2, 3, 32, 256, 256)
    assert out64.image.shape == out128.image.shape == (2, 3, 512, 512)
    assert out64.image_raw.shape == (2, 3, 64, 64) and out128.image_depth.shape == (2, 1, 128, 128)
    assert logits.shape == (2, 1)
    n_g = sum(p.numel() for p in G.parameters())
    assert 20e6 < n_g < 40e6  # EG3D's generator is ~31M parameters


def test_gradients_reach_every_parameter():
    cfg = GANConfig.tiny(**MICRO)
    torch.manual_seed(0)
    G, D = TriPlaneGenerator(cfg), build_discriminator(cfg)
    z, c = torch.randn(2, cfg.z_dim), cams([10, -100])
    out = G(z, c)
    logits = D(out.image, out.image_raw, torch.rand(2, cfg.d_label_dim))
    dens = G.sample_density(out.planes, torch.rand(2, 20, 3) - 0.5)
    (logits.sum() + dens.sigma.sum()).backward()
    missing = [n for n, p in list(G.named_parameters()) + list(D.named_parameters())
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []


def test_sample_density_is_the_renderers_decoder():
    cfg = GANConfig.tiny(**MICRO)
    G = TriPlaneGenerator(cfg)
    ws = G.mapping(torch.randn(1, cfg.z_dim), cams([0]))
    planes = G.synthesize_planes(ws, noise_mode="const")
    pts = torch.rand(1, 7, 3) - 0.5
    s = G.sample_density(planes, pts)
    assert isinstance(s, DensitySample)
    assert s.sigma.shape == (1, 7, 1) and s.features.shape == (1, 7, 32) and s.rgb.shape == (1, 7, 3)
    assert (s.rgb >= -0.001).all() and (s.rgb <= 1.001).all()
    torch.testing.assert_close(s.density, torch.nn.functional.softplus(s.sigma - 1))
    ref = G.renderer.run_model(planes, pts[:, :, None])
    torch.testing.assert_close(s.sigma[..., 0], ref.sigma[:, 0, :, 0])
    with pytest.raises(ValueError, match="points"):
        G.sample_density(planes, pts[0])


def test_truncation_and_pose_conditioning_switch():
    cfg = GANConfig.tiny(**MICRO)
    G = TriPlaneGenerator(cfg)
    z = torch.randn(3, cfg.z_dim)
    G.mapping(z, cams([0, 1, 2]), update_emas=True)
    ws0 = G.mapping(z, cams([0, 1, 2]), truncation_psi=0.0)
    torch.testing.assert_close(ws0, G.mapping_net.w_avg.expand_as(ws0))
    with pytest.raises(ValueError, match="pose conditioning"):
        G.mapping(z, None)
    G2 = TriPlaneGenerator(cfg.replace(pose_conditioning=False))
    torch.testing.assert_close(G2.mapping(z, cams([0, 90, 180])), G2.mapping(z, None))


def test_float64_and_bfloat16_autocast():
    cfg = GANConfig.tiny(**MICRO)
    torch.manual_seed(0)
    G, D = TriPlaneGenerator(cfg).eval(), build_discriminator(cfg)
    z, c, label = torch.randn(4, cfg.z_dim), cams([0, 45, 120, 180]), torch.randn(4, cfg.d_label_dim)
    out = G.double()(z.double(), c.double())
    assert out.image.dtype == torch.float64 and torch.isfinite(out.image).all()
    G = G.float()

    def forward(bf16: bool):
        torch.manual_seed(1)  # the same ray jitter in both passes
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = G(z, c, noise_mode="const")
            return out.image, out.image_raw, D(out.image, out.image_raw, label)

    # bf16 keeps 8 significant bits (0.4% spacing) and each output passes ~20 rounded layers: measured mean
    # errors of 0.4-1.9% of the outputs' mean magnitude, single pixels up to 0.08. Tolerance: 4% mean, 0.25 max.
    for ref, low in zip(forward(False), forward(True)):
        assert low.dtype == torch.bfloat16 and ref.dtype == torch.float32
        err = (low.float() - ref).abs()
        assert 0 < err.mean() < 0.04 * ref.abs().mean() and err.max() < 0.25, (err.mean(), err.max(), ref.abs().mean())


def test_bad_camera_shape_raises():
    cfg = GANConfig.tiny(**MICRO)
    G = TriPlaneGenerator(cfg)
    ws = G.mapping(torch.randn(1, cfg.z_dim), cams([0]))
    with pytest.raises(ValueError, match="25"):
        G.synthesis(ws, torch.zeros(1, 16))


def test_channels_last_and_nchw_execution_agree(monkeypatch):
    """The CPU working format (NHWC between entry and exit) changes layouts, not numbers."""
    from avatar3d.gan.layers import to_working_format

    cfg = GANConfig(**MICRO)
    torch.manual_seed(0)
    G, D = TriPlaneGenerator(cfg), build_discriminator(cfg)
    z, c = torch.randn(4, cfg.z_dim), cams([0, 60, 120, 180])
    label = torch.rand(4, cfg.d_label_dim)
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("AVATAR3D_CHANNELS_LAST", flag)
        probe = to_working_format(torch.zeros(1, 4, 2, 2))
        assert probe.is_contiguous() == (flag == "0")  # NHWC storage only when on
        G.zero_grad()
        torch.manual_seed(1)  # same noise and ray jitter for both layouts
        out = G(z, c, noise_mode="random")
        logits = D(out.image, out.image_raw, label)
        logits.square().sum().backward()
        assert out.image.is_contiguous()  # images leave in NCHW either way
        results[flag] = (out.image.detach(), logits.detach(), {k: p.grad.clone() for k, p in G.named_parameters()})
    (img1, log1, g1), (img0, log0, g0) = results["1"], results["0"]
    torch.testing.assert_close(img1, img0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log1, log0, rtol=1e-4, atol=1e-5)
    for k in g0:
        scale = g0[k].abs().max().item()
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-3, atol=1e-4 * max(scale, 1e-6), msg=k)
