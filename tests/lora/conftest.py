"""Shared fixtures: a folder of character images and one tiny LoRA run (trained, logged, registered once)."""
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "jobs" / "configs" / "lora_tiny.yaml"
TOKEN = "<grn>"


def write_character_images(folder: Path, n: int = 6, size: int = 48) -> Path:
    """``n`` pictures of one cartoon 'character': a green round face with two eyes, slightly moved about."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        im = np.full((size, size, 3), (240, 220, 180), np.uint8)
        cx, cy = size // 2 + rng.integers(-3, 4), size // 2 + rng.integers(-3, 4)
        im[(yy - cy) ** 2 + (xx - cx) ** 2 < (size * 0.3) ** 2] = (40, 160, 60)
        for dx in (-5, 5):
            im[(yy - cy + 4) ** 2 + (xx - cx - dx) ** 2 < 9] = (0, 0, 0)
        Image.fromarray(im).save(folder / f"char_{i}.png")
    return folder


@pytest.fixture(scope="package", autouse=True)
def lora_cache_dir(tmp_path_factory):
    """Registry downloads go to a cache of these tests; package-scoped, so the tests outside tests/lora/ get the
    session's own cache back (tests/conftest.py) instead of this one."""
    old = os.environ.get("AVATAR3D_CACHE_DIR")
    path = tmp_path_factory.mktemp("cache")
    os.environ["AVATAR3D_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AVATAR3D_CACHE_DIR", None)
    else:
        os.environ["AVATAR3D_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def character_images(tmp_path_factory):
    return write_character_images(tmp_path_factory.mktemp("character"))


def tiny_config(images, output_dir, *overrides):
    from avatar3d.config import load_config
    from avatar3d.lora.config import LoraTrainConfig

    return load_config(LoraTrainConfig, TINY_YAML, [f"images={images}", f"token={TOKEN}",
                                                    f"output_dir={output_dir}", *overrides])


@pytest.fixture(scope="session")
def tiny_lora(character_images, tmp_path_factory):
    """jobs/configs/lora_tiny.yaml on the character images, MLflow in a temporary SQLite store, registered."""
    import mlflow

    from avatar3d.lora.train import train_lora

    out = tmp_path_factory.mktemp("lora_run")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    # Keep the run's artifacts in the temporary folder too (MLflow's default is ./mlruns).
    mlflow.MlflowClient(uri).create_experiment("lora-test", artifact_location=str(out / "artifacts"))
    cfg = tiny_config(character_images, out, f"tracking.tracking_uri={uri}", "tracking.experiment=lora-test",
                      "num_samples=2")
    return cfg, train_lora(cfg), uri
