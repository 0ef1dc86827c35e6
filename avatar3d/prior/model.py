"""The W-space diffusion prior (docs/method.md section 6): a denoiser over one w, conditioned on a CLIP image embedding.

Choices, and why:

- **Denoiser**: diffusers' ``PriorTransformer`` (DALL-E 2 / Kandinsky's prior),
  with the image embedding as its ``proj_embedding`` token (``embedding_proj_dim``
  lets it differ from ``w_dim``), no text tokens (``encoder_hid_proj_type=None``,
  ``num_embeddings=0``) and the read-out token ``prd``. Sequence: [condition,
  time, noisy w, prd] -> 4 tokens.
- **One w, not ws**: EG3D broadcasts the same w to every synthesis layer
  (:class:`avatar3d.gan.mapping.MappingNetwork` repeats it), so the prior
  models the first row and the generator gets it broadcast back.
- **Unit scale**: w is normalised per dimension with the pair set's mean / std.
  The statistics live in the transformer's own ``clip_mean`` / ``clip_std``
  parameters (frozen), diffusers' place for them: they are saved and loaded
  with the weights, and ``post_process_latents`` maps samples back to w.
- **Target**: ``prediction_type="sample"`` by default (the denoiser predicts
  clean w, as the unCLIP prior does: the loss is then an MSE in normalised w
  space); ``"epsilon"`` and ``"v_prediction"`` are accepted too. Training uses
  ``DDPMScheduler`` (squared-cosine betas); sampling DDIM (eta 0:
  deterministic after the initial noise) or UniPC.
- **Classifier-free guidance**: in training the condition is replaced with
  the null condition with probability ``cond_drop_prob``; at sampling
  ``pred = uncond + s * (cond - uncond)``. The null condition is the zero
  vector: real embeddings are unit-norm, so it is never a real image, and it
  needs no extra parameter to save.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, PriorTransformer, UniPCMultistepScheduler

from avatar3d.prior.config import PREDICTION_TYPES, SAMPLERS


@dataclass(frozen=True)
class PriorSize:
    """Transformer width/depth. ``inner = heads * head_dim``."""

    num_attention_heads: int
    attention_head_dim: int
    num_layers: int

    @classmethod
    def preset(cls, name: str) -> "PriorSize":
        sizes = {
            "tiny": cls(num_attention_heads=2, attention_head_dim=32, num_layers=2),
            # For w_dim 512 + CLIP-L (768): ~70M parameters (Kandinsky 2.2's prior is 1280 wide, 20 deep).
            "paper": cls(num_attention_heads=12, attention_head_dim=64, num_layers=10),
        }
        if name not in sizes:
            raise ValueError(f"prior size preset {name!r} is not known; pass one of {sorted(sizes)}")
        return sizes[name]


def build_prior(w_dim: int, embed_dim: int, size: PriorSize):
    """A fresh ``PriorTransformer`` over w (``w_dim``) conditioned on an embedding (``embed_dim``)."""
    prior = PriorTransformer(
        num_attention_heads=size.num_attention_heads, attention_head_dim=size.attention_head_dim,
        num_layers=size.num_layers, embedding_dim=w_dim, num_embeddings=0, additional_embeddings=4,
        norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type="prd",
        embedding_proj_dim=embed_dim, clip_embed_dim=w_dim,
    )
    set_w_stats(prior, torch.zeros(w_dim), torch.ones(w_dim))
    return prior


def set_w_stats(prior, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Store the normalisation of w in the prior (frozen parameters, saved with the weights)."""
    w_dim = prior.clip_mean.shape[-1]
    mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    if mean.shape != (w_dim,) or std.shape != (w_dim,):
        raise ValueError(f"w stats: mean/std must have shape ({w_dim},), got {tuple(mean.shape)}/{tuple(std.shape)}")
    if not bool((std > 0).all()):
        raise ValueError("w stats: std must be > 0 in every dimension (are all pairs' w identical?)")
    with torch.no_grad():
        prior.clip_mean.copy_(mean[None])
        prior.clip_std.copy_(std[None])
    prior.clip_mean.requires_grad_(False)
    prior.clip_std.requires_grad_(False)


def normalize_w(prior, w: torch.Tensor) -> torch.Tensor:
    return (w - prior.clip_mean) / prior.clip_std


def train_scheduler(prediction_type: str = "sample", num_train_timesteps: int = 1000):
    """The DDPM schedule the prior is trained with (its config is saved beside the weights)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: {prediction_type!r} is not known; pass one of {PREDICTION_TYPES}")
    # clip_sample off: normalised w is unit-variance, not bounded to [-1, 1] like pixels.
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type=prediction_type, clip_sample=False)


def sampling_scheduler(train_config, sampler: str = "ddim"):
    """DDIM or UniPC on the training schedule (same betas, same prediction type)."""
    if sampler == "ddim":
        return DDIMScheduler.from_config(train_config, clip_sample=False, set_alpha_to_one=True)
    if sampler == "unipc":
        return UniPCMultistepScheduler.from_config(train_config)
    raise ValueError(f"sampler: {sampler!r} is not known; pass one of {SAMPLERS}")


def diffusion_loss(prior, scheduler, w: torch.Tensor, embedding: torch.Tensor, cond_drop_prob: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One denoising loss on a batch of (w, embedding); draws t, noise and the dropped conditions."""
    x0 = normalize_w(prior, w)
    n = x0.shape[0]
    dev = x0.device
    noise = torch.randn(x0.shape, generator=generator).to(dev)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(dev)
    keep = (torch.rand(n, generator=generator) >= cond_drop_prob).to(dev, embedding.dtype)
    cond = embedding * keep[:, None]  # dropped rows get the null (zero) condition
    noisy = scheduler.add_noise(x0, noise, t)
    pred = prior(noisy, t, proj_embedding=cond).predicted_image_embedding
    kind = scheduler.config.prediction_type
    target = x0 if kind == "sample" else noise if kind == "epsilon" else scheduler.get_velocity(x0, noise, t)
    return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def sample_w(prior, scheduler, embedding: torch.Tensor, guidance_scale: float = 4.0, num_steps: int = 25,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Embeddings (N, D) -> sampled w (N, w_dim), with classifier-free guidance.

    ``guidance_scale`` 1 is the plain conditional model, 0 the unconditional
    one; above 1 pushes samples towards the condition. ``generator`` seeds the
    initial noise.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: {num_steps} must be >= 1")
    dev, dtype = prior.clip_mean.device, prior.clip_mean.dtype
    embedding = embedding.to(dev, dtype)
    n, w_dim = embedding.shape[0], prior.clip_mean.shape[-1]
    scheduler.set_timesteps(num_steps, device=dev)
    x = torch.randn((n, w_dim), generator=generator).to(dev, dtype) * scheduler.init_noise_sigma
    guided = guidance_scale != 1.0
    cond = torch.cat([torch.zeros_like(embedding), embedding]) if guided else embedding
    # DDIM (eta 0) and UniPC add no noise while stepping: the initial noise is the only randomness.
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        pred = prior(x_in, t, proj_embedding=cond).predicted_image_embedding
        if guided:
            uncond, conditional = pred.chunk(2)
            pred = uncond + guidance_scale * (conditional - uncond)
        x = scheduler.step(pred, t, x).prev_sample
    return prior.post_process_latents(x)
