"""evaluation/gan/outline_range.py: latents fitted to silhouettes move the opacity towards them; bad input is one line."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "evaluation" / "gan" / "outline_range.py"
_spec = importlib.util.spec_from_file_location("outline_range", SCRIPT)
outline_range = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(outline_range)


@pytest.fixture(scope="module")
def G():
    from avatar3d.gan.config import GANConfig
    from avatar3d.gan.generator import TriPlaneGenerator
    from tests.training.fixtures import MICRO_GAN

    torch.manual_seed(0)
    return TriPlaneGenerator(GANConfig.tiny(**{**MICRO_GAN, "white_back": True})).eval().requires_grad_(False)


def test_fitting_moves_the_opacity_towards_the_silhouettes(G):
    size = int(G.cfg.output_resolution)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2)[None]  # one identity, a disc
    assert not outline_range.render_masks(G, outline_range.mean_w(G), "front").any()  # untrained: empty
    ws, losses = outline_range.fit_latents(G, {"front": disc}, ["front"], steps=4, space="wplus", lr=0.1,
                                           log=lambda *_: None)
    assert ws.shape == outline_range.mean_w(G).shape and len(losses) == 4
    assert losses[-1] < losses[0]  # the cross-entropy against the disc falls
    w_ws, _ = outline_range.fit_latents(G, {"front": disc}, ["front"], steps=1, space="w", log=lambda *_: None)
    assert torch.equal(w_ws[:, 0], w_ws[:, -1])  # one w, broadcast to every layer
    with pytest.raises(ValueError, match="space must be 'w' or 'wplus'"):
        outline_range.fit_latents(G, {"front": disc}, ["front"], steps=1, space="z")


def test_an_unknown_camera_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), "--snapshot", "x.safetensors",
                          "--fit", "front,top", "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == "--fit: unknown camera(s) top; pass a comma list of front, left, right, back"
    assert not (tmp_path / "o.json").exists()
