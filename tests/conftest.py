"""Test-wide environment: offline hub, no Ray usage stats, one torch thread.

Set before anything imports torch/ray so that child processes (Ray workers)
inherit it too.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def head_dataset(tmp_path_factory):
    """A tiny Parquet dataset of canonical-head renders in the generator's schema (see tests/training/fixtures.py)."""
    from tests.training.fixtures import write_head_dataset

    return write_head_dataset(tmp_path_factory.mktemp("head_dataset"))
