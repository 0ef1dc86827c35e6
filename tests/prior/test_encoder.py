"""The prior's image encoder (tiny random CLIP) and the checks on user images."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from avatar3d.hub import ModelUnavailableError
from avatar3d.prior.encoder import MIN_IMAGE_SIDE, check_image, load_image_encoder, load_input_image, tiny_encoder

torch.set_num_threads(1)


def _images(seed, n=3, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_tiny_encoder_is_deterministic_unit_norm_and_depends_on_the_image():
    a, b = tiny_encoder(seed=0), tiny_encoder(seed=0)
    images = _images(0)
    ea, eb = a.embed(images), b.embed(list(images))
    assert ea.shape == (3, a.dim) and ea.dtype == torch.float32
    assert torch.equal(ea, eb)
    assert torch.allclose(ea.norm(dim=1), torch.ones(3), atol=1e-5)
    # Different images, different embeddings; another weight seed, another encoder.
    assert (ea[0] - ea[1]).abs().max() > 1e-3
    assert not torch.allclose(tiny_encoder(seed=1).embed(images), ea)


def test_embedding_does_not_depend_on_the_batch_it_is_in():
    enc = tiny_encoder()
    images = _images(1, n=4)
    assert torch.allclose(enc.embed(images[:1]), enc.embed(images)[:1], atol=1e-5)


def test_tiny_encoder_round_trips_through_save_pretrained(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    enc = tiny_encoder()
    enc.save_pretrained(tmp_path)
    loaded = load_image_encoder(str(tmp_path))
    assert isinstance(loaded.model, CLIPVisionModelWithProjection)
    assert isinstance(loaded.processor, CLIPImageProcessor)
    images = _images(2)
    assert torch.allclose(loaded.embed(images), enc.embed(images), atol=1e-6)


def test_missing_real_encoder_fails_in_one_line_naming_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = (r"^HF_HUB_OFFLINE=1 and model openai/clip-vit-large-patch14-not-cached is not in the local cache: "
                r"pass a local folder \(e\.g\. image_encoder=/path/to/")
    with pytest.raises(ModelUnavailableError, match=expected) as info:
        load_image_encoder("openai/clip-vit-large-patch14-not-cached")
    assert "\n" not in str(info.value) and info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_or_wrong_local_encoder_folder(tmp_path):
    missing = tmp_path / "nope"
    folder = re.escape(str(missing))
    with pytest.raises(ModelUnavailableError, match=f"^image_encoder='{folder}': local folder not found"):
        load_image_encoder(str(missing))
    # A folder that exists but holds no CLIP vision model: named as such, not transformers' traceback.
    folder = re.escape(str(tmp_path))
    with pytest.raises(ModelUnavailableError, match=f"^image_encoder='{folder}' is not a CLIP vision model"):
        load_image_encoder(str(tmp_path))


def test_input_image_checks(tmp_path):
    good = tmp_path / "ok.png"
    Image.fromarray(_images(3, n=1, size=40)[0]).save(good)
    assert load_input_image(good).mode == "RGB"

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_input_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="not a readable image"):
        load_input_image(junk)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="not a readable image"):
        load_input_image(truncated)
    small = tmp_path / "small.png"
    Image.new("RGB", (MIN_IMAGE_SIDE - 1, 64)).save(small)
    with pytest.raises(ValueError, match="too small"):
        load_input_image(small)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(deep)
    with pytest.raises(ValueError, match="pixel mode"):
        load_input_image(deep)


def test_channels_are_normalised_to_rgb():
    gray = check_image(Image.new("L", (32, 32), 100))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (100, 100, 100)
    # Transparent pixels composite onto white (the renders' background is not black-on-alpha).
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :] = (10, 20, 30, 255)
    out = np.asarray(check_image(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[-1, -1]) == (255, 255, 255)
