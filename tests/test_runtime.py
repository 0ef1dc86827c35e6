"""Local-run defaults (avatar3d/runtime.py): what `avatar3d` sets unless it was exported, applied before the
stage modules are imported; and the test session's one torch thread.

The defaults are applied in child processes with a controlled environment, so this process's environment
is never changed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests import REPO

DEFAULTED = ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "TORCH_EXTENSIONS_DIR",
             "TOKENIZERS_PARALLELISM", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "HF_HUB_OFFLINE",
             "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR", "AVATAR3D_HUB_ACCESS",
             "AVATAR3D_CACHE_DIR", "RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")

# A stand-in for Ray: records how init_local_ray would start it, starts nothing.
FAKE_RAY = """
import sys, types
ray = types.ModuleType("ray")
ray.calls = []
ray.is_initialized = lambda: False
ray.init = lambda **kw: ray.calls.append(kw)
sys.modules["ray"] = ray
"""
CHILD = FAKE_RAY + """
import json, os
from avatar3d.runtime import apply_local_defaults, init_local_ray
applied = apply_local_defaults()
init_local_ray(num_cpus=1)
print(json.dumps({"applied": applied, "env": dict(os.environ), "ray_init": ray.calls}))
"""


def _child_env(**env) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in DEFAULTED}
    base.update(env)
    return base


def _apply_in_child(tmp_path, **env) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=_child_env(**env), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_local_defaults_in_a_clean_environment(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the no-GPU default applies on every machine.
    seen = _apply_in_child(tmp_path, CUDA_VISIBLE_DEVICES="")
    env = seen["env"]
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1"
    assert env["DS_ACCELERATOR"] == "cpu"
    assert env["TORCH_EXTENSIONS_DIR"] == str(tmp_path.resolve() / ".cache" / "torch_extensions")
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert set(seen["applied"]) >= {"RAY_USAGE_STATS_ENABLED", "HF_HUB_OFFLINE", "DS_ACCELERATOR",
                                    "TORCH_EXTENSIONS_DIR"}
    # Ray on 127.0.0.1: the local head binds and advertises the loopback address
    (call,) = seen["ray_init"]
    assert call["_node_ip_address"] == "127.0.0.1" and call["num_cpus"] == 1 and "address" not in call


def test_values_exported_beforehand_are_kept(tmp_path):
    exported = {"RAY_USAGE_STATS_ENABLED": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                "DS_ACCELERATOR": "cuda", "TORCH_EXTENSIONS_DIR": str(tmp_path / "mine"),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "CUDA_VISIBLE_DEVICES": ""}
    seen = _apply_in_child(tmp_path, **exported)
    assert {k: seen["env"][k] for k in exported} == exported
    assert not set(seen["applied"]) & set(exported)


def test_hub_access_leaves_the_hub_online(tmp_path):
    seen = _apply_in_child(tmp_path, AVATAR3D_HUB_ACCESS="1", CUDA_VISIBLE_DEVICES="")
    assert "HF_HUB_OFFLINE" not in seen["env"] and "TRANSFORMERS_OFFLINE" not in seen["env"]
    assert seen["env"]["RAY_USAGE_STATS_ENABLED"] == "0"  # the other defaults still apply


def test_a_set_ray_address_is_joined_instead_of_a_local_head(tmp_path):
    (call,) = _apply_in_child(tmp_path, RAY_ADDRESS="10.1.2.3:6379", CUDA_VISIBLE_DEVICES="")["ray_init"]
    assert call["address"] == "10.1.2.3:6379" and "_node_ip_address" not in call


S3_ENV = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_ENDPOINT_URL": "http://10.0.0.9:9000"}


def _without_aws(**env) -> dict[str, str]:
    """The child's environment with only the AWS_* variables given here (none of the developer's own)."""
    base = _child_env(**env)
    return {k: v for k, v in base.items() if not k.startswith("AWS_") or k in env}


def _ray_init_in_child(tmp_path, **env) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=_without_aws(**env), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (call,) = json.loads(done.stdout.splitlines()[-1])["ray_init"]
    return call


def test_a_driver_joining_a_cluster_hands_its_aws_variables_to_the_workers(tmp_path):
    """Workers on other nodes start with their raylet's environment, not the driver's: the AWS_* variables
    (object-store credentials and endpoint) go into the job's runtime_env, which reaches every worker.
    tests/cluster/test_multinode_training.py shows it on a cluster started without them."""
    call = _ray_init_in_child(tmp_path, RAY_ADDRESS="10.1.2.3:6379", CUDA_VISIBLE_DEVICES="", **S3_ENV)
    assert call["address"] == "10.1.2.3:6379"
    assert call["runtime_env"] == {"env_vars": S3_ENV}


def test_the_local_ray_and_a_driver_without_aws_variables_get_no_runtime_env(tmp_path):
    # an embedded local Ray's workers are the driver's children: they inherit its environment as before
    assert "runtime_env" not in _ray_init_in_child(tmp_path, CUDA_VISIBLE_DEVICES="", **S3_ENV)
    assert "runtime_env" not in _ray_init_in_child(tmp_path, RAY_ADDRESS="10.1.2.3:6379", CUDA_VISIBLE_DEVICES="")


def test_variables_of_a_submitted_jobs_runtime_env_are_not_repeated(tmp_path):
    """Under `ray job submit` the job's runtime_env reaches the workers already, and Ray refuses a ray.init
    env var that repeats one of its keys ("Failed to merge the Job's runtime env"): only the others go."""
    job = json.dumps({"runtime_env": {"env_vars": {"AWS_ACCESS_KEY_ID": "from-the-job"}}})
    call = _ray_init_in_child(tmp_path, RAY_ADDRESS="10.1.2.3:6379", CUDA_VISIBLE_DEVICES="",
                              RAY_JOB_CONFIG_JSON_ENV_VAR=job, **S3_ENV)
    assert call["runtime_env"] == {"env_vars": {k: v for k, v in S3_ENV.items() if k != "AWS_ACCESS_KEY_ID"}}


def test_the_command_applies_the_defaults_before_it_imports_a_stage_module(tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: the stage module a command imports must find it
    set. With HF_HUB_OFFLINE unset, `avatar3d image-to-avatar` (a bad image, so it stops early, after its
    stage module is imported) leaves huggingface_hub imported and offline."""
    script = """
import json, sys
from avatar3d.cli import main
before = "huggingface_hub" in sys.modules
rc = main(["image-to-avatar", "missing.png", "--prior", "missing-prior", "--out", "out"])
import huggingface_hub.constants
print(json.dumps({"before": before, "rc": rc, "imported_by_the_stage": "avatar3d.prior.avatar" in sys.modules,
                  "offline": huggingface_hub.constants.HF_HUB_OFFLINE}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_child_env(CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {"before": False, "rc": 2, "imported_by_the_stage": True, "offline": True}, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the refused command wrote nothing


def test_tests_run_with_one_torch_thread_per_process():
    """tests/conftest.py: one torch thread in the test process, and OMP_NUM_THREADS=1 exported, so every child
    process (Ray workers included) starts with one thread too."""
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1"]
