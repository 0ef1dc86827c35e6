"""``avatar3d lora-train`` / jobs/train_lora.py: flags, overrides, and one-line errors for bad image folders."""
import json
import subprocess
import sys

import pytest
import torch

torch.set_num_threads(1)

from avatar3d.cli import main  # noqa: E402
from tests.lora.conftest import REPO, TINY_YAML, write_character_images  # noqa: E402


def _error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("avatar3d lora-train: error: ")
    return err


@pytest.mark.parametrize("setup, expected", [
    ("empty", "is empty"),
    ("non_image", "non-image file 'readme.md'"),
    ("too_few", "holds 2 image(s), fewer than min_images=5"),
])
def test_bad_image_folders_give_one_line(tmp_path, capsys, setup, expected):
    folder = tmp_path / "imgs"
    folder.mkdir()
    if setup == "non_image":
        write_character_images(folder, n=6)
        (folder / "readme.md").write_text("# my character")
    elif setup == "too_few":
        write_character_images(folder, n=2)
    err = _error_line(capsys, ["lora-train", "--config", str(TINY_YAML), "--images", str(folder), "--token", "<c>",
                               f"output_dir={tmp_path / 'out'}"])
    assert "images=" in err and expected in err


def test_token_is_taken_verbatim_and_overrides_apply(tmp_path, capsys):
    assert main(["lora-train", "--config", str(TINY_YAML), "--images", str(tmp_path), "--token", "123",
                 "steps=7", "tracking.register_name=mine", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["token"] == "123" and cfg["images"] == str(tmp_path)  # not YAML-parsed into an int
    assert cfg["steps"] == 7 and cfg["tracking"]["register_name"] == "mine" and cfg["preset"] == "tiny"


def test_missing_token_and_unknown_option(tmp_path, capsys):
    err = _error_line(capsys, ["lora-train", "--config", str(TINY_YAML), "--images", str(tmp_path)])
    assert "token=''" in err
    err = _error_line(capsys, ["lora-train", "--images", str(tmp_path), "--token", "x", "stepz=3"])
    assert "unknown option 'stepz'" in err and "steps" in err


def test_job_entrypoint_delegates_to_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "train_lora.py"), "--config", str(TINY_YAML),
                           "--images", str(tmp_path), "--token", "<c>"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("avatar3d lora-train: error: images=")
