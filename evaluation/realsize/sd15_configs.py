"""Published architecture configs of SD 1.5 and the ControlNet v1.1 nets, as dicts.

Written from the ``config.json`` files of ``stable-diffusion-v1-5/stable-diffusion-v1-5``
(unet/, vae/, text_encoder/, scheduler/, model_index.json, feature_extractor/) and of
``lllyasviel/control_v11p_sd15_openpose`` / ``lllyasviel/control_v11f1p_sd15_depth``
(both nets share one config). No file is downloaded: these dicts are the architecture,
the weights are random (:mod:`make_random_models`).

``PUBLISHED_PARAMS`` holds the published checkpoints' parameter counts (``tests/test_realsize.py`` asserts them).
"""
from __future__ import annotations

# Published parameter counts (sum of numel over the checkpoint's parameters).
PUBLISHED_PARAMS = {
    "unet": 859_520_964,          # SD 1.5 UNet2DConditionModel
    "controlnet": 361_278_976,    # ControlNet v1.1 (each)
    "vae": 83_653_863,            # AutoencoderKL (kl-f8)
    "text_encoder": 123_060_480,  # CLIP ViT-L/14 text tower
}

UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

CONTROLNET = {
    "_class_name": "ControlNetModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "class_embed_type": None,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "upcast_attention": False,
    "use_linear_projection": False,
}

VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# CLIPTextConfig of openai/clip-vit-large-patch14 as SD 1.5's text_encoder/config.json has it.
TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# The image encoder of the paper prior: CLIP ViT-L/14's vision tower with its 768-d projection
# (openai/clip-vit-large-patch14, vision_config), as CLIPVisionModelWithProjection builds it.
IMAGE_ENCODER = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
}

SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

FEATURE_EXTRACTOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def model_kwargs(config: dict) -> dict:
    """A config.json dict -> constructor kwargs (the ``_``-prefixed keys dropped)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build(name: str, device: str | None = None):
    """One SD 1.5-size component with random weights; ``device="meta"`` allocates nothing."""
    import contextlib

    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ctx = torch.device(device) if device else contextlib.nullcontext()
    with ctx:
        if name == "unet":
            return UNet2DConditionModel(**model_kwargs(UNET))
        if name == "controlnet":
            return ControlNetModel(**model_kwargs(CONTROLNET))
        if name == "vae":
            return AutoencoderKL(**model_kwargs(VAE))
        if name == "image_encoder":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
            return CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_ENCODER))
        if name == "text_encoder":
            cfg = {k: v for k, v in TEXT_ENCODER.items() if k not in ("architectures", "model_type")}
            return CLIPTextModel(CLIPTextConfig(**cfg))
    raise ValueError(f"unknown component {name!r}: pass one of {sorted(PUBLISHED_PARAMS)}")


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())
