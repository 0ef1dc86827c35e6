"""StyleGAN2 building blocks in pure PyTorch (no custom CUDA ops).

Same maths as NVlabs' ``networks_stylegan2.py`` + ``torch_utils/ops``:
equalized learning rate (weights stored N(0, 1) / lr_mul and scaled at run
time), weight-demodulated modulated convolutions, the [1, 3, 3, 1] FIR
low-pass around every resampling, bias + leaky ReLU with gain sqrt(2).

Where NVlabs needs a compiled ``upfirdn2d`` / ``bias_act`` kernel we use plain
torch ops with identical results: the FIR filter is separable, so it runs as
two depthwise 1-D convolutions, which is what makes it cheap on CPU.

Everything follows the dtype and device of its input, so the modules run on
CPU or GPU, in float32 or under autocast.

Memory format: on CPU the networks run channels-last (NHWC) between their
entry and exit (:func:`to_working_format`), where oneDNN's convolutions,
transposed convolutions and depthwise FIR filters were 20-40% faster
(forward + backward) than NCHW on the GAN's shapes. Results are the same
tensors in another layout; ``AVATAR3D_CHANNELS_LAST=0`` keeps NCHW.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avatar3d.runtime import env_flag

LRELU_GAIN = math.sqrt(2.0)
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def channels_last_enabled(x: torch.Tensor) -> bool:
    """Whether activations like ``x`` run channels-last (CPU only; see the module docstring)."""
    if x.device.type != "cpu" or x.dim() != 4:
        return False
    return env_flag("AVATAR3D_CHANNELS_LAST")


def to_working_format(x: torch.Tensor) -> torch.Tensor:
    """A network's input in its working memory format (channels-last on CPU)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last_enabled(x) else x


def fir_1d(taps=FIR_TAPS) -> torch.Tensor:
    """Normalised 1-D FIR taps (sum 1); the 2-D filter is their outer product."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return f / f.sum()


def fir_filter2d(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int], gain: float = 1.0,
                 down: int = 1) -> torch.Tensor:
    """Separable FIR ``f`` (1-D taps) on every channel, zero padding ``pad`` = (before, after)
    on both axes, optional decimation ``down``: NVlabs' ``upfirdn2d(up=1)``.

    The taps are symmetric here, so convolution and correlation agree. Symmetric padding
    (every call in this package) is left to the convolutions, avoiding a padded copy.
    """
    c = x.shape[1]
    f = f.to(device=x.device, dtype=x.dtype) * math.sqrt(gain)
    k = f.numel()
    kw, kh = f.view(1, 1, 1, k).expand(c, 1, 1, k), f.view(1, 1, k, 1).expand(c, 1, k, 1)
    if pad[0] == pad[1]:
        p = pad[0]
        x = F.conv2d(x, kw, stride=(1, down), padding=(0, p), groups=c)
        return F.conv2d(x, kh, stride=(down, 1), padding=(p, 0), groups=c)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    x = F.conv2d(x, kw, stride=(1, down), groups=c)
    return F.conv2d(x, kh, stride=(down, 1), groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x2 upsampling with the FIR filter (zero insertion + low-pass, gain 4): NVlabs' upsample2d.

    Zero insertion followed by the 4-tap filter with padding (2, 1) equals a stride-2
    transposed depthwise convolution with padding 1, which skips the inserted zeros
    (a quarter of the multiply-adds). Separable: one pass per axis, gain 2 each.
    """
    c = x.shape[1]
    k = f.numel()
    f = (f.to(device=x.device, dtype=x.dtype) * 2.0).flip(0)
    pad = (k - 2) // 2
    x = F.conv_transpose2d(x, f.view(1, 1, 1, k).expand(c, 1, 1, k), stride=(1, 2), padding=(0, pad), groups=c)
    return F.conv_transpose2d(x, f.view(1, 1, k, 1).expand(c, 1, k, 1), stride=(2, 1), padding=(pad, 0), groups=c)


def resize_bilinear(x: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize to (size, size), half-pixel centres; computed in float32 for half
    types because antialiased resampling has no bf16/fp16 kernel on every device."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return y.to(x.dtype)


def gaussian_blur2d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """EG3D's blur of D's input: a 1-D kernel 2**(-(t/sigma)^2), |t| <= floor(3 sigma), separable."""
    size = math.floor(sigma * 3)
    if size <= 0:
        return x
    t = torch.arange(-size, size + 1, device=x.device, dtype=torch.float32)
    f = t.div(sigma).square().neg().exp2()
    # In float32 with autocast off: under CPU bf16 autocast, oneDNN's depthwise convolution of channels-last
    # images with this many taps (61 at the initial sigma 10) ran for minutes; float32 takes milliseconds and
    # a blur gains nothing from bf16. An fp32 run is unchanged.
    with torch.autocast(device_type=x.device.type, enabled=False):
        return fir_filter2d(x.float(), f / f.sum(), (size, size)).to(x.dtype)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float = 1.0,
             clamp: float | None = None) -> torch.Tensor:
    """Bias over the channel dim (dim 1), activation, gain, optional clamp: NVlabs' bias_act."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    elif act != "linear":
        raise ValueError(f"activation must be 'linear' or 'lrelu', got {act!r}")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnected(nn.Module):
    """Equalized-lr linear layer (weight N(0,1)/lr_mul, scaled by lr_mul/sqrt(fan_in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        x = F.linear(x, w, b)
        return F.leaky_relu(x, 0.2) * self.act_gain

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
                    padding: int = 0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Convolution with FIR-filtered x2 up- or down-sampling, NVlabs' ``conv2d_resample`` paths.

    up=2:   transposed conv (stride 2) then FIR with gain 4.
    down=2: FIR then strided conv (3x3), or FIR-decimate then 1x1 conv.
    """
    kh = w.shape[-1]
    k = f.numel()
    if bias is not None and up != 1:
        raise ValueError("conv2d_resample: a fused bias is only supported without upsampling")
    if up == 1 and down == 1:
        return F.conv2d(x, w, bias, padding=padding)
    if up == 2 and down == 1:
        p0 = padding + (k + up - 1) // 2 - (kh - 1)
        p1 = padding + (k - up) // 2 - (kh - up)
        # conv_transpose2d takes weights as (in, out, kh, kw); like NVlabs, no spatial flip.
        x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        return fir_filter2d(x, f, (p0, p1), gain=4.0)
    if down == 2 and up == 1:
        p0 = padding + (k - down + 1) // 2
        p1 = padding + (k - down) // 2
        if kh == 1:
            x = fir_filter2d(x, f, (p0, p1), down=2)
            return F.conv2d(x, w, bias)
        x = fir_filter2d(x, f, (p0, p1))
        return F.conv2d(x, w, bias, stride=2)
    raise ValueError(f"conv2d_resample supports up=2 or down=2, got up={up}, down={down}")


class Conv2dLayer(nn.Module):
    """Equalized-lr conv with optional FIR resampling (discriminator layers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", fir_1d(), persistent=False)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        g = self.act_gain * gain
        if self.conv_clamp is None and self.up == 1:
            # lrelu(conv(x, w) + b) * g == lrelu(conv(x, w g) + b g) for g > 0: the bias and the
            # gain ride along in the convolution instead of two extra passes over the output.
            w = self.weight.to(x.dtype) * (self.weight_gain * g)
            b = self.bias.to(x.dtype) * g if self.bias is not None else None
            x = conv2d_resample(x, w, self.resample_filter, 1, self.down, self.padding, bias=b)
            return F.leaky_relu(x, 0.2) if self.activation == "lrelu" else x
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, self.resample_filter, self.up, self.down, self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, g, clamp)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, f: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     demodulate: bool = True) -> torch.Tensor:
    """StyleGAN2 modulated conv, the non-fused formulation (scale x, shared conv, scale out).

    Demodulation coefficient of output o: rsqrt(sum_{i,k} (w_oik s_i)^2 + 1e-8). Since
    the sum factorises as sum_i s_i^2 * (sum_k w_oik^2), it is one (B, I) x (I, O)
    matmul instead of materialising the (B, O, I, k, k) per-sample weights.
    """
    weight = weight.to(x.dtype)
    styles = styles.to(x.dtype)
    x = x * styles[:, :, None, None]
    x = conv2d_resample(x, weight, f, up=up, padding=padding)
    if demodulate:
        x = x * demod_coefficients(weight, styles)[:, :, None, None]
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def demod_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """(B, O) rsqrt(sum_i s_i^2 sum_k w_oik^2 + 1e-8)."""
    return (styles.square() @ weight.square().sum([2, 3]).t() + 1e-8).rsqrt()


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + lrelu (optionally x2 upsampling)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.register_buffer("resample_filter", fir_1d(), persistent=False)
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            # Shape [1], not []: DeepSpeed broadcasts parameters as byte views, which 0-d tensors refuse.
            self.noise_strength = nn.Parameter(torch.zeros([1]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", gain: float = 1.0) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        g = LRELU_GAIN * gain
        weight = self.weight.to(x.dtype)
        styles = styles.to(x.dtype)
        x = conv2d_resample(x * styles[:, :, None, None], weight, self.resample_filter, up=self.up, padding=1)
        # Demodulation, noise, bias and the lrelu gain in one pass (gain g > 0 commutes with
        # lrelu): lrelu(x d + n + b) g == lrelu(x (d g) + (n g + b g)).
        d = demod_coefficients(weight, styles) * g
        shift = self.bias.to(x.dtype).view(1, -1, 1, 1) * g
        # The per-channel shift first keeps x's memory format (a full-size shift of bias + noise
        # would impose its own, NCHW); the noise, one value per pixel, is added in place.
        x = torch.addcmul(shift, x, d[:, :, None, None])
        if noise is not None:
            x = x.add_(noise * g)
        x = F.leaky_relu(x, 0.2)
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp * gain, self.conv_clamp * gain)
        return x


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation (to the output channels)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", fir_1d(), persistent=False)
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = (self.affine(w) * self.weight_gain).to(x.dtype)
        # A 1x1 modulated conv without demodulation is a per-sample matrix W diag(s): one bmm
        # over (B, I, H*W), with no pass to scale x first.
        n, c, h, w_ = x.shape
        wmod = self.weight.to(x.dtype)[:, :, 0, 0][None] * styles[:, None, :]  # (B, O, I)
        b = self.bias.to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # NHWC storage: (B, HW, I) x (B, I, O) -> (B, HW, O), i.e. a channels-last output.
            xs = x.permute(0, 2, 3, 1).reshape(n, h * w_, c)
            y = torch.baddbmm(b.view(1, 1, -1), xs, wmod.transpose(1, 2))
            y = y.view(n, h, w_, -1).permute(0, 3, 1, 2)
        else:
            y = torch.baddbmm(b.view(1, -1, 1).expand(n, -1, h * w_), wmod, x.reshape(n, c, h * w_))
            y = y.view(n, -1, h, w_)
        return y.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else y


class SynthesisBlock(nn.Module):
    """StyleGAN2 'skip' block: [const | up-conv] + conv + toRGB, image upsampled and summed.

    ``up=False`` is EG3D's SynthesisBlockNoUp (used in 2x/4x super-resolution).
    ``num_ws`` = number of w vectors the block consumes.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 up: bool = True, use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.resolution, self.up = in_channels, resolution, up
        self.register_buffer("resample_filter", fir_1d(), persistent=False)
        self.num_conv = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2 if up else 1,
                                        use_noise=use_noise, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, use_noise=use_noise,
                                    conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_ws = self.num_conv + 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = to_working_format(self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1))
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        if img is not None and self.up:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter))
        img = y if img is None else img + y.to(img.dtype)
        return x, img
