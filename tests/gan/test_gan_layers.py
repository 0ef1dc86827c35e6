"""Pure-torch StyleGAN2 ops against direct formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from avatar3d.gan import layers as L

torch.set_num_threads(1)


def test_fir_upsample_preserves_a_constant_and_matches_the_2d_filter():
    f = L.fir_1d()
    x = torch.full((1, 2, 6, 6), 3.0)
    up = L.upsample2d(x, f)
    assert up.shape == (1, 2, 12, 12)
    # Away from the zero-padded border the constant survives (filter gain 4 undoes zero insertion).
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    # Reference: zero insertion + full 2-D filter (outer product) with upfirdn2d's padding (2, 1).
    y = torch.randn(1, 1, 5, 5)
    z = torch.zeros(1, 1, 10, 10)
    z[..., ::2, ::2] = y
    k2 = torch.outer(f, f) * 4
    ref = F.conv2d(F.pad(z, [2, 1, 2, 1]), k2[None, None])
    torch.testing.assert_close(L.upsample2d(y, f), ref)


def test_downsampling_conv_shapes_and_up_conv_shapes():
    f = L.fir_1d()
    x = torch.randn(2, 4, 16, 16)
    w3 = torch.randn(5, 4, 3, 3)
    w1 = torch.randn(5, 4, 1, 1)
    assert L.conv2d_resample(x, w3, f, down=2, padding=1).shape == (2, 5, 8, 8)
    assert L.conv2d_resample(x, w1, f, down=2).shape == (2, 5, 8, 8)
    assert L.conv2d_resample(x, w3, f, up=2, padding=1).shape == (2, 5, 32, 32)


def test_modulated_conv_equals_per_sample_demodulated_weights():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8)
    weight = torch.randn(6, 4, 3, 3)
    styles = torch.randn(3, 4)
    out = L.modulated_conv2d(x, weight, styles, L.fir_1d(), padding=1)
    for i in range(3):
        wi = weight * styles[i].view(1, -1, 1, 1)
        wi = wi / (wi.square().sum([1, 2, 3], keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(out[i:i + 1], F.conv2d(x[i:i + 1], wi, padding=1), rtol=1e-4, atol=1e-5)


def test_gaussian_blur_keeps_mass_and_smooths():
    x = torch.zeros(1, 1, 41, 41)
    x[..., 20, 20] = 1.0
    y = L.gaussian_blur2d(x, 2.0)
    assert y.shape == x.shape
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert y.max().item() < 0.1
    assert L.gaussian_blur2d(x, 0.1) is x  # floor(3 sigma) == 0: no blur


def test_equalized_lr_linear_scales_weights():
    fc = L.FullyConnected(16, 8, lr_multiplier=0.01)
    x = torch.randn(4, 16)
    torch.testing.assert_close(fc(x), x @ (fc.weight * 0.01 / math.sqrt(16)).t() + fc.bias * 0.01)


def test_bad_activation_and_noise_mode_raise():
    with pytest.raises(ValueError, match="activation"):
        L.bias_act(torch.zeros(1, 1), None, act="gelu")
    layer = L.SynthesisLayer(4, 4, 8, 8)
    with pytest.raises(ValueError, match="noise_mode"):
        layer(torch.zeros(1, 4, 8, 8), torch.zeros(1, 8), noise_mode="loud")


def test_fused_layers_equal_the_reference_op_sequence():
    """Folded gains / fused bias / bmm toRGB give NVlabs' op-by-op results."""
    torch.manual_seed(0)
    f = L.fir_1d()
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(2, 6)
    for up in (1, 2):
        layer = L.SynthesisLayer(4, 5, 6, 8 * up, up=up)
        with torch.no_grad():
            layer.bias.normal_()
            layer.noise_strength.fill_(0.7)
        styles = layer.affine(w)
        noise = layer.noise_const * layer.noise_strength
        ref = L.modulated_conv2d(x, layer.weight, styles, f, noise, up=up, padding=1)
        ref = L.bias_act(ref, layer.bias, "lrelu", math.sqrt(2) * 0.5)
        torch.testing.assert_close(layer(x, w, noise_mode="const", gain=0.5), ref, rtol=1e-4, atol=1e-5)
    rgb = L.ToRGBLayer(4, 3, 6)
    with torch.no_grad():
        rgb.bias.normal_()
    ref = L.modulated_conv2d(x, rgb.weight, rgb.affine(w) * rgb.weight_gain, f, demodulate=False)
    torch.testing.assert_close(rgb(x, w), L.bias_act(ref, rgb.bias), rtol=1e-4, atol=1e-5)
    for down, k in ((1, 3), (2, 3), (2, 1)):
        conv = L.Conv2dLayer(4, 5, k, activation="lrelu", down=down)
        with torch.no_grad():
            conv.bias.normal_()
        ref = L.conv2d_resample(x, conv.weight * conv.weight_gain, f, down=down, padding=k // 2)
        torch.testing.assert_close(conv(x, gain=0.5), L.bias_act(ref, conv.bias, "lrelu", math.sqrt(2) * 0.5),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pad, down", [((2, 2), 1), ((1, 1), 2), ((2, 1), 1)])
def test_fir_filter_matches_padded_2d_convolution(pad, down):
    torch.manual_seed(0)
    f = L.fir_1d()
    x = torch.randn(2, 3, 9, 9)
    k2 = torch.outer(f, f)[None, None].expand(3, 1, 4, 4)
    ref = F.conv2d(F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), k2, stride=down, groups=3)
    torch.testing.assert_close(L.fir_filter2d(x, f, pad, down=down), ref)
