"""Local-run defaults: the environment a laptop or CI box needs, set once at start-up.

Cluster jobs get the same code; each default yields to a value the user has
already exported, so a cluster's runtime_env wins over these.

- Ray on loopback, usage stats off (no call to an outside server).
- ``HF_HUB_OFFLINE=1`` unless the user asks for hub access
  (``AVATAR3D_HUB_ACCESS=1`` or an explicit ``HF_HUB_OFFLINE``): a hub id that
  is not in the local cache then fails at once with a clear message instead of
  retrying for half a minute.
- DeepSpeed's / torch's C++ extension cache in an ignored folder (``.cache/``)
  so the one-off JIT build is reused across runs.
- ``DS_ACCELERATOR=cpu`` where there is no CUDA device.
- A driver joining a cluster (``$RAY_ADDRESS``) hands its ``AWS_*`` variables to
  the job's workers on every node (:func:`forwarded_env`).

The C allocator is not chosen here: glibc reads its tunables and the loader
``LD_PRELOAD`` only when a process starts, so the Makefile and
``cluster/runtime_env.yaml`` set them for the processes they start
(``evaluation/gan/README.md``, "Allocator").
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "AVATAR3D_CACHE_DIR"
FORWARDED_ENV_PREFIX = "AWS_"  # what a driver joining a cluster hands its workers (forwarded_env)


def cache_dir() -> Path:
    """Where local caches live: ``$AVATAR3D_CACHE_DIR`` or ``./.cache``."""
    return Path(os.environ.get(CACHE_DIR_ENV, Path.cwd() / ".cache")).resolve()


def apply_local_defaults() -> dict[str, str]:
    """Set the local-run environment defaults; returns what was set."""
    defaults = {
        "RAY_USAGE_STATS_ENABLED": "0",
        # Single-node Ray binds and advertises 127.0.0.1 with this set.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "TORCH_EXTENSIONS_DIR": str(cache_dir() / "torch_extensions"),
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    if os.environ.get("AVATAR3D_HUB_ACCESS", "0") != "1":
        defaults["HF_HUB_OFFLINE"] = "1"
        defaults["HF_DATASETS_OFFLINE"] = "1"
        defaults["TRANSFORMERS_OFFLINE"] = "1"
    if not _cuda_visible():
        defaults["DS_ACCELERATOR"] = "cpu"
    applied = {}
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


def set_torch_threads(n: int | None = None) -> int:
    """Pin torch's intra-op threads (``$OMP_NUM_THREADS`` or ``n``).

    On a small box torch's OpenMP pool fights Ray workers and other processes;
    one thread per process was 15-70x faster in tests there.
    """
    import torch  # heavy: this module is on the CLI's --help path, which must not load torch

    if n is None:
        n = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def env_flag(name: str, default: bool = True) -> bool:
    """An on/off environment switch: "0", "false", "no" and "off" (any case) mean off."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def init_local_ray(num_cpus: int | None = None, **kwargs):
    """Start (or join) Ray: the cluster given by ``$RAY_ADDRESS``, else an embedded local one on 127.0.0.1."""
    import ray  # heavy: the CLI's --help path and avatar3d.gan import this module; neither may load Ray

    apply_local_defaults()
    if ray.is_initialized():
        return ray
    if os.environ.get("RAY_ADDRESS"):
        env_vars = forwarded_env()
        if env_vars:
            runtime_env = dict(kwargs.pop("runtime_env", None) or {})
            runtime_env["env_vars"] = {**env_vars, **(runtime_env.get("env_vars") or {})}
            kwargs["runtime_env"] = runtime_env
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        # The dashboard serves the state API, which Ray Train's placement-group cleaner polls every second
        # (without it: a warning a second, and no clean-up of a dead controller's placement group).
        kwargs.setdefault("include_dashboard", True)
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    return ray


def forwarded_env() -> dict[str, str]:
    """The driver's ``AWS_*`` variables (object-store credentials, endpoint, region) for the job's workers.

    A driver joining a cluster (``$RAY_ADDRESS``) runs its tasks and actors in worker processes that the
    nodes' raylets start with the *raylet's* environment, not the driver's: without these, a Ray Train
    worker on another node uploads its checkpoints to ``s3://`` with no credentials or endpoint. Ray's
    job-level ``runtime_env={"env_vars": ...}`` hands them to every worker of the job on every node.
    Names the job's own runtime environment already sets (``ray job submit --runtime-env``, which Ray
    hands the driver in ``RAY_JOB_CONFIG_JSON_ENV_VAR``) are left out: that value already reaches the
    workers, and Ray refuses a ``ray.init`` env var that repeats a job-level one.

    The values travel in the job's config, which the cluster's dashboard shows to whoever can reach it.
    """
    names = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if names and job_config:
        import json

        job_env = ((json.loads(job_config).get("runtime_env") or {}).get("env_vars") or {})
        names = {k: v for k, v in names.items() if k not in job_env}
    return names


def _cuda_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def default_device() -> str:
    """"cuda" where a CUDA device is usable, else "cpu"."""
    import torch  # heavy: this module is on the CLI's --help path, which must not load torch

    return "cuda" if torch.cuda.is_available() else "cpu"
