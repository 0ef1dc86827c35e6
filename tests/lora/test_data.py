"""The image folder: what is accepted, what is refused (one line naming the option), how images are prepared."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from PIL import Image  # noqa: E402

from avatar3d.config import ConfigError  # noqa: E402
from avatar3d.lora.data import find_images, load_image, load_image_set  # noqa: E402
from avatar3d.lora.train import train_lora  # noqa: E402
from tests.lora.conftest import tiny_config, write_character_images  # noqa: E402


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(ValueError) as err:
        find_images(tmp_path, min_images=5)
    msg = _one_line(err)
    assert msg.startswith("images=") and "is empty" in msg


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(ValueError, match=r"^images=.*does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^images=.*is a file, not a folder"):
        find_images(tmp_path / "a.png")


def test_non_image_file_is_refused_by_name(tmp_path):
    write_character_images(tmp_path, n=6)
    (tmp_path / "notes.txt").write_text("my character")
    with pytest.raises(ValueError) as err:
        find_images(tmp_path, min_images=5)
    msg = _one_line(err)
    assert msg.startswith("images=") and "'notes.txt'" in msg and ".png" in msg


def test_too_few_images_names_min_images(tmp_path):
    write_character_images(tmp_path, n=3)
    with pytest.raises(ValueError) as err:
        find_images(tmp_path, min_images=5)
    msg = _one_line(err)
    assert msg.startswith("images=") and "3 image(s)" in msg and "min_images=5" in msg
    assert len(find_images(tmp_path, min_images=3)) == 3


def test_hidden_files_and_subfolders_are_ignored(tmp_path):
    write_character_images(tmp_path, n=5)
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "c.txt").write_text("x")
    found = find_images(tmp_path, min_images=5)
    assert [p.name for p in found] == [f"char_{i}.png" for i in range(5)]


def test_corrupt_image_is_named(tmp_path):
    write_character_images(tmp_path, n=5)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError) as err:
        load_image_set(tmp_path, 32, min_images=5)
    assert "'broken.jpg'" in _one_line(err)


def test_load_image_crops_centre_and_puts_transparency_on_white(tmp_path):
    # 60x30 RGBA: left third red, middle third transparent (hidden colour blue), right third green.
    arr = np.zeros((30, 60, 4), np.uint8)
    arr[:, :20] = (255, 0, 0, 255)
    arr[:, 20:40] = (0, 0, 255, 0)
    arr[:, 40:] = (0, 255, 0, 255)
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    # Short side 30 -> 16 keeps the middle 16 of 32 columns: the transparent band, now white.
    np.testing.assert_allclose(x[:, :, 4:12], 1.0, atol=1e-6)


def test_train_lora_checks_the_folder_before_loading_models(tmp_path):
    write_character_images(tmp_path / "imgs", n=2)
    cfg = tiny_config(tmp_path / "imgs", tmp_path / "out")
    with pytest.raises(ValueError, match=r"^images=.*min_images=5"):
        train_lora(cfg)
    assert not (tmp_path / "out" / "lora").exists()


@pytest.mark.parametrize("override, field", [
    ("token=", "token="),
    ("caption_template=a portrait of a person", "caption_template="),
    ("caption_template={token} in {colour}", "caption_template="),
    ("resolution=36", "resolution="),
    ("target_modules=[]", "target_modules="),
    ("tracking.register_name=bad name!", "tracking.register_name="),
])
def test_bad_options_fail_in_one_line_naming_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as err:
        tiny_config(tmp_path, tmp_path / "out", override)
    assert _one_line(err).startswith(field)


def test_caption_and_slug():
    from avatar3d.lora.config import LoraTrainConfig
    from avatar3d.tracking.options import TrackingOptions

    cfg = LoraTrainConfig(images="x", token="<My Char>", style="3D render").validate()
    assert cfg.caption == "a 3D render portrait of <My Char>"
    assert cfg.tracking.registry_name(cfg.default_register_name) == "avatar3d-lora-my-char"
    assert TrackingOptions(register_name="mine").registry_name("x") == "mine"
    assert TrackingOptions(register=False).registry_name("x") is None
    assert TrackingOptions(enabled=False).registry_name("x") is None
