"""Shared fixtures of the prior's tests: a micro generator snapshot and pairs built from it (in-process).

The generator is untrained (seeded random weights): its W space is still a
real, deterministic map from w to images, which is all the prior needs to
learn "image -> w".
"""
import pytest
import torch

from avatar3d.gan.config import GANConfig
from avatar3d.gan.generator import TriPlaneGenerator
from avatar3d.prior.config import BuildPairsConfig
from avatar3d.prior.pairs import run_build_pairs
from avatar3d.gan.snapshot import save_snapshot
from tests.training.fixtures import MICRO_GAN

NUM_TRAIN_PAIRS = 256
NUM_HELDOUT = 16


@pytest.fixture(scope="session")
def micro_snapshot(tmp_path_factory):
    cfg = GANConfig.tiny(**MICRO_GAN)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = TriPlaneGenerator(cfg).eval()
    path = tmp_path_factory.mktemp("gan") / "micro.safetensors"
    return save_snapshot(path, G, cfg.to_dict(), {"kimg": 0.0})


def build_pairs_local(folder, snapshot, n, seed, batch_size=64):
    cfg = BuildPairsConfig(output_dir=str(folder), snapshot=str(snapshot), num_pairs=n, seed=seed,
                           batch_size=batch_size)
    return run_build_pairs(cfg, use_ray=False).folder


@pytest.fixture(scope="session")
def train_pairs(tmp_path_factory, micro_snapshot):
    """256 pairs, seed 0 (row i depends only on (0, i))."""
    return build_pairs_local(tmp_path_factory.mktemp("pairs"), micro_snapshot, NUM_TRAIN_PAIRS, seed=0)


@pytest.fixture(scope="session")
def heldout_pairs(tmp_path_factory, micro_snapshot):
    """16 pairs from another seed: identities the prior never saw."""
    return build_pairs_local(tmp_path_factory.mktemp("heldout"), micro_snapshot, NUM_HELDOUT, seed=1)
