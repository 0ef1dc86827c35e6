"""Test-wide environment: offline hub, no Ray usage stats, one torch thread.

Set before anything imports torch/ray so that child processes (Ray workers)
inherit it too.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# What the CLI sets for its own process before the hub is imported (avatar3d.cli.main); the tests call main()
# in this process, where the hub is imported long before.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Caches (FID reference statistics, view classifiers, downloaded models) go to a folder of this session, not the
# checkout's .cache/; compiled extensions stay in the checkout's build cache (as the Makefile puts them).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(_REPO, ".cache", "torch_extensions"))
os.environ["AVATAR3D_CACHE_DIR"] = tempfile.mkdtemp(prefix="avatar3d-test-cache-")
atexit.register(shutil.rmtree, os.environ["AVATAR3D_CACHE_DIR"], True)

# A developer's own MLflow server or experiment must never receive test runs: every test names its store.
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
              "MLFLOW_RUN_ID", "AVATAR3D_LOG_LEVEL", "AVATAR3D_DEBUG", "RAY_ADDRESS"):
    os.environ.pop(_name, None)

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _mlflow_globals_restored():
    """A test that sets MLflow's process-wide tracking URI or leaves a run open does not leak it into the
    next test (checked only once some test has imported MLflow: the import costs seconds)."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    before = getattr(utils, "_tracking_uri", None)
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = before
    # set_tracking_uri exports the URI to the environment (for child processes) too, also from a module
    # fixture set up before this one: back to the session's start, where it is unset (above)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _process_wide_settings() -> dict:
    """Settings of the process that library code must leave as it found them (Ray Data options go on its own
    datasets' contexts; only the CLI and Ray actors quiet the hub's bars): read once a test has imported them."""
    state = {}
    context = sys.modules.get("ray.data.context")
    if context is not None:
        ctx = context.DataContext.get_current()
        state["ray.data enable_progress_bars"] = ctx.enable_progress_bars
        state["ray.data preserve_order"] = ctx.execution_options.preserve_order
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        state["transformers progress bars"] = hf_logging.is_progress_bar_enabled()
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        state["huggingface_hub progress bars disabled"] = hub.are_progress_bars_disabled()
    return state


@pytest.fixture(autouse=True)
def _process_wide_settings_untouched():
    before = _process_wide_settings()
    yield
    after = _process_wide_settings()
    if "ray.data preserve_order" in after and "ray.data preserve_order" not in before:  # Ray Data imported here
        fresh = sys.modules["ray.data.context"].DataContext()
        before.update({"ray.data enable_progress_bars": fresh.enable_progress_bars,
                       "ray.data preserve_order": fresh.execution_options.preserve_order})
    changed = {k: (before[k], after[k]) for k in before.keys() & after.keys() if before[k] != after[k]}
    assert not changed, f"the code under test changed process-wide settings (before, after): {changed}"


@pytest.fixture(scope="session")
def head_dataset(tmp_path_factory):
    """A tiny Parquet dataset of canonical-head renders in the generator's schema (see tests/training/fixtures.py)."""
    from tests.training.fixtures import write_head_dataset

    return write_head_dataset(tmp_path_factory.mktemp("head_dataset"))
