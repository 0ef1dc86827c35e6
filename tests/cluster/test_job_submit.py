"""A real Ray head on 127.0.0.1 (`ray start`) and the smoke generation job through `ray job submit`.

This is the cluster path end to end on one machine: the job is zipped from
the working tree with the cluster's runtime environment
(cluster/runtime_env.yaml, its cluster-only paths pointed at a temp
folder), uploaded to the head's job server, run by a driver that joins the
running cluster through RAY_ADDRESS, and must leave a readable Parquet
dataset behind.

Why the head is started with `--block` in its own session and stopped by
killing that process group (not `ray stop --force`): `ray stop` kills every
Ray process of the user on the machine, including other people's clusters and
test runs on a shared box. Every process of this head (GCS, raylet, dashboard,
agents, workers, the job driver) descends from the blocking `ray start`, so
the group holds exactly what this test started.

Every port is chosen free, not Ray's default: a second Ray on the machine
already holds e.g. the dashboard agent's 52365, and then the job server has
no agent to hand the job to ("No available agent to submit job").
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from unittest import mock

import pytest
import yaml

from tests.cluster.fake_cluster import RAY_BIN, free_ports, ray_env, stop_group

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 8
SUBMIT_RETRY_S = 60      # the job server needs its head-node agent registered first
JOB_TIMEOUT_S = 240      # the smoke job itself takes ~20-40 s on 2 busy cores


def _ray(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY_BIN), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


class LocalHead:
    """`ray start --head --block` as a child process group; `stop()` ends exactly that group."""

    def __init__(self, temp_root: Path, env: dict):
        self.env = env
        self.gcs_port, self.dashboard_port, self.agent_port, self.client_port = free_ports(4)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = temp_root / "head.log"
        cmd = [
            str(RAY_BIN), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(self.agent_port),
            "--ray-client-server-port", str(self.client_port),
            "--num-cpus", "4",
            "--include-dashboard", "true",
            # A short private temp dir: socket paths stay under the 107-char limit
            # and this head never touches another session's /tmp/ray.
            "--temp-dir", str(temp_root / "ray"),
            "--disable-usage-stats",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_for_dashboard(self, timeout: float = 90) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"dashboard at {self.address} not up after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_group(self.proc)


def _job_runtime_env(folder: Path) -> Path:
    """cluster/runtime_env.yaml with its cluster-only paths (shared HF cache, hub access) made local."""
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    env["env_vars"].update({
        "HF_HOME": str(folder / "hf_home"),
        "AVATAR3D_HUB_ACCESS": "0",
        "TORCH_EXTENSIONS_DIR": str(folder / "torch_extensions"),
    })
    path = folder / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(env))
    return path


@pytest.fixture(scope="module")
def ray_head():
    if not RAY_BIN.exists():
        pytest.skip(f"no `ray` executable next to {sys.executable}: install ray[default] into this environment")
    temp_root = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    env = ray_env()
    head = LocalHead(temp_root, env)
    try:
        head.wait_for_dashboard()
        yield head, temp_root
    finally:
        head.stop()
        shutil.rmtree(temp_root, ignore_errors=True)


def _submit(head: LocalHead, job_id: str, runtime_env: Path, entrypoint: list[str]) -> None:
    args = ["job", "submit", "--address", head.address, "--submission-id", job_id, "--no-wait",
            "--runtime-env", str(runtime_env), "--working-dir", str(REPO), "--", *entrypoint]
    deadline = time.monotonic() + SUBMIT_RETRY_S
    while True:
        r = _ray(args, head.env)
        if r.returncode == 0:
            return
        if "No available agent" not in r.stderr + r.stdout or time.monotonic() > deadline:
            raise AssertionError(f"ray job submit failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        time.sleep(2)


def _wait(head: LocalHead, job_id: str) -> str:
    """Poll the job server until the job ends; returns its final status or TIMEOUT.

    Polled over HTTP with Ray's own client: one `ray job status` process costs
    5-10 s of start-up on a busy 2-core box.
    """
    from ray.job_submission import JobSubmissionClient

    with mock.patch.dict(os.environ, {"RAY_AUTH_MODE": "disabled"}):
        client = JobSubmissionClient(head.address)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            status = client.get_job_status(job_id)
            if status.is_terminal():
                return status.value
            time.sleep(1)
    return "TIMEOUT"


def _logs(head: LocalHead, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    with mock.patch.dict(os.environ, {"RAY_AUTH_MODE": "disabled"}):
        return JobSubmissionClient(head.address).get_job_logs(job_id)


@pytest.mark.slow  # a real `ray start` head and a submitted job (33 s): simulated-cluster tests run in make test-slow
def test_generation_job_through_ray_job_submit(ray_head):
    head, temp_root = ray_head
    out = temp_root / f"ds-{uuid.uuid4().hex[:6]}"
    job_id = f"avatar3d-smoke-{uuid.uuid4().hex[:8]}"
    entrypoint = ["python", "jobs/generate_dataset.py", "--config", "jobs/configs/generate_tiny.yaml",
                  f"num_samples={NUM_SAMPLES}", f"output_dir={out}", "progress_interval_s=0"]
    _submit(head, job_id, _job_runtime_env(temp_root), entrypoint)
    status = _wait(head, job_id)
    logs = _logs(head, job_id)
    assert status == "SUCCEEDED", f"job {job_id} ended {status}; driver log tail:\n{logs[-4000:]}"

    # The driver joined this head (RAY_ADDRESS from the job server), not an embedded Ray of its own.
    assert f"127.0.0.1:{head.gcs_port}" in logs, logs[-2000:]

    import pyarrow.parquet as pq
    from PIL import Image

    from avatar3d.datagen.schema import ROW_SCHEMA
    from avatar3d.datagen.shards import list_shards, read_dataset

    shards = list_shards(out)
    assert shards, f"no Parquet shards under {out}"
    assert pq.read_schema(shards[0]).remove_metadata().equals(ROW_SCHEMA.remove_metadata())
    table = read_dataset(out)
    assert table.num_rows == NUM_SAMPLES
    assert table.column("index").to_pylist() == list(range(NUM_SAMPLES))
    assert len(set(table.column("id").to_pylist())) == NUM_SAMPLES
    for png, w, h in zip(table.column("image_png").to_pylist()[:2], table.column("width").to_pylist(),
                         table.column("height").to_pylist()):
        img = Image.open(io.BytesIO(png))
        assert img.size == (w, h) == (64, 64)
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["complete"] and card["num_rows"] == NUM_SAMPLES
