"""The image encoder of the prior: a CLIP vision tower, and the checks on input images.

Real use loads ``transformers.CLIPVisionModelWithProjection`` (e.g.
``openai/clip-vit-large-patch14``) from a hub id or a local folder. The
``tiny`` preset builds a small CLIP vision config with seeded random weights
and an image processor from a config: nothing is downloaded, and the
embedding is still a deterministic function of the image (what tests need).

Embeddings are L2-normalised (CLIP's own similarity space), so the prior's
null condition (zeros, see :mod:`avatar3d.prior.model`) can never collide
with a real embedding.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from avatar3d.config import MIN_IMAGE_SIDE, check_image_size  # noqa: F401  (MIN_IMAGE_SIDE: re-exported)
from avatar3d.hub import ModelUnavailableError, check_model_available

TINY = "tiny"
# Beside a folder encoder: a card that says in words what it is (e.g. not CLIP: trained in the procedural
# world by evaluation/image_to_avatar/world_encoder.py); the report quotes its "what".
ENCODER_CARD = "world_encoder.json"
# Input images: smaller than this cannot hold a face; larger is a decompression bomb or a mistake.
# PIL modes we convert to RGB; the rest (16-bit, float, ...) are refused rather than guessed at.
_CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "RGBX"}


@dataclass
class ImageEncoder:
    """CLIP vision tower + its processor; ``embed`` returns unit-norm embeddings (N, dim)."""

    model: torch.nn.Module
    processor: object
    name: str

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        """Images (list of PIL / HxWx3 uint8 arrays, or an (N, H, W, 3) uint8 array) -> (N, dim) float32."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        pixels = self.processor(images=[as_rgb(im) for im in images], return_tensors="pt")["pixel_values"]
        device = next(self.model.parameters()).device
        emb = self.model(pixel_values=pixels.to(device, self.model.dtype)).image_embeds.float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)


def tiny_encoder(seed: int = 0, image_size: int = 32, dim: int = 32) -> ImageEncoder:
    """A small random CLIP vision tower (2 layers, width 32) built from a config, seeded."""
    # transformers stays out of this module's imports: it (and huggingface_hub with it) reads HF_HUB_OFFLINE
    # once, at import, and prior.pairs imports this module before run_build_pairs' apply_local_defaults() sets
    # it (a missing encoder would then retry the hub instead of failing at once); the image checks need none.
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8, projection_dim=dim)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(cfg)
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return ImageEncoder(model=model.eval().requires_grad_(False), processor=processor, name=TINY)


def load_image_encoder(name_or_path: str, seed: int = 0, device: str | torch.device = "cpu") -> ImageEncoder:
    """``"tiny"`` -> :func:`tiny_encoder`; else a hub id or local folder of a CLIP vision model.

    A model that cannot be loaded (offline cache miss, wrong folder) raises one
    line naming the model and the fix.
    """
    if name_or_path == TINY:
        return tiny_encoder(seed)
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection  # local: see tiny_encoder

    path = os.path.expanduser(name_or_path)
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(path)
        processor = CLIPImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        # Turn transformers' multi-paragraph cache-miss error into one line.
        check_model_available(name_or_path, "image_encoder")
        raise ModelUnavailableError(f"image_encoder={name_or_path!r} is not a CLIP vision model "
                                    "(CLIPVisionModelWithProjection + preprocessor_config.json); pass e.g. "
                                    "openai/clip-vit-large-patch14 or a folder saved from it") from None
    return ImageEncoder(model=model.to(device).eval().requires_grad_(False), processor=processor,
                        name=name_or_path)


# -- input images -------------------------------------------------------------------------

def as_rgb(image) -> Image.Image:
    """PIL image or HxW(x3/x4) uint8 array -> RGB PIL image (alpha composited on white)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_input_image(path: str | Path, field: str = "IMAGE") -> Image.Image:
    """Open and check a user image: readable, 8-bit channels, each side within limits -> RGB.

    Every failure is one line (ValueError / FileNotFoundError) naming the file and what to pass.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: {path} does not exist or is not a file; pass a PNG or JPEG image")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{field}: {path} is not a readable image ({reason}); pass a PNG or JPEG") from None
    return check_image(image, f"{field} {path}")


def check_image(image: Image.Image, what: str = "image") -> Image.Image:
    """Size and channel checks on an opened image -> RGB image."""
    check_image_size(*image.size, what)
    if image.mode not in _CONVERTIBLE_MODES:
        raise ValueError(f"{what}: pixel mode {image.mode!r} (e.g. 16-bit or float) is not supported; pass an "
                         "8-bit RGB, RGBA or grayscale image")
    return as_rgb(image)


def image_from_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
