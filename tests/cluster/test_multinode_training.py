"""train-gan on a simulated multi-node cluster (Ray's ``fake_multinode`` provider, tests/cluster/fake_cluster.py):
2 Ray Train workers on 2 worker nodes, checkpoints in a bucket of a real S3-compatible server (moto's, on
127.0.0.1), resumed from there, and a training node lost mid-run.

The nodes are real raylets on this machine and share its disk, which would hide a checkpoint file that a
node never uploads: so ``output_dir`` (Ray Train's storage) is an ``s3://`` URI. The cluster starts
without any ``AWS_*`` variable; only the driver (this process, joining through ``RAY_ADDRESS``) has them,
and ``avatar3d.runtime.init_local_ray`` hands them to the job's workers (a worker on another node starts
with its raylet's environment, not the driver's).

Head ``{CPU: 1}``: too small for a training worker (``scaling.cpus_per_worker=2``), enough for Ray Data's
read tasks; Ray Train's controller (0 CPU) sits on the driver's node, the head. Worker nodes
``{CPU: 2}``, one training worker each, two kept up (``min_workers``), a third allowed for a replacement.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.cluster.fake_cluster import FakeCluster, ray_env
from tests.s3_server import fresh_prefix, s3_bucket, s3_server  # noqa: F401 - fixtures
from tests.training.fixtures import MICRO_GAN

# A cluster of 3 raylets and 2 worker processes per run on 2 cores: ~2-5 min per training run.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TICK_KIMG = 0.008  # 2 steps of the global batch of 4


@pytest.fixture(scope="module")
def cluster():
    """The cluster, started from an environment without AWS_*: no node can reach the bucket on its own."""
    # Short and outside the checkout: a socket path under pytest's tmp_path passes AF_UNIX's 107 characters.
    root = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))
    # Ray's memory monitor off: on a shared box it killed the training workers when other processes filled
    # the machine's memory (a failure the run's max_failures then counted); the kernel's OOM killer remains.
    env = {k: v for k, v in ray_env(RAY_memory_monitor_refresh_ms="0").items() if not k.startswith("AWS_")}
    try:
        with FakeCluster(root / "c", {"CPU": 1},
                         {"cpu2": {"resources": {"CPU": 2}, "min_workers": 2, "max_workers": 3}},
                         idle_timeout_minutes=10, env=env) as fake:
            fake.wait_for_workers(2, timeout=300)
            yield fake
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def driver(cluster, s3_bucket, monkeypatch):
    """This process as the job's driver: RAY_ADDRESS names the cluster; the AWS_* variables (s3_bucket's) are
    in this environment only."""
    import ray

    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    for pid in cluster.raylet_pids().values():  # the worker nodes really lack them
        assert not [k for k in psutil.Process(pid).environ() if k.startswith("AWS_")]
    yield cluster
    ray.shutdown()


def _cfg(out: str, data, tmp: Path, run_name: str, **over):
    from avatar3d.config import load_config
    from avatar3d.training.config import TrainGANConfig

    overrides = [f"data.path={data}", f"output_dir={out}", f"run_name={run_name}", "batch_size=4",
                 f"kimg_per_tick={TICK_KIMG}", "max_failures=0", "scaling.num_workers=2", "scaling.cpus_per_worker=2",
                 "tracking.register=false", f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
                 *[f"{k}={v}" for k, v in over.items()]]
    cfg = load_config(TrainGANConfig, None, overrides)
    cfg.model.overrides = dict(MICRO_GAN)
    return cfg


def _recorder(records: Path, park: Path | None = None):
    """The after_tick hook (shipped to the workers by value): each rank writes down its tick, Ray node, pid and
    the AWS_* names it sees. With ``park``, rank 1 stops after tick 1 (once) and waits to be killed with its
    node: the test kills that node once Ray has registered tick 1's checkpoint."""
    records.mkdir(parents=True, exist_ok=True)

    def after_tick(tick, rank):
        import json
        import os
        import time

        import ray

        rec = {"tick": tick, "rank": rank, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
               "t": time.time(), "aws": sorted(k for k in os.environ if k.startswith("AWS_"))}
        (records / f"tick{tick}-rank{rank}-{os.getpid()}.json").write_text(json.dumps(rec))
        if park is not None and tick == 1 and rank == 1 and not park.exists():
            park.write_text(json.dumps(rec))
            time.sleep(600)

    return after_tick


def _records(folder: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["t"])


def _kimg_history(result, tmp: Path) -> list[float]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    return [m.value for m in client.get_metric_history(result.mlflow_run_id, "kimg")]


def _checkpoints(bucket, prefix: str, run_name: str) -> dict[str, set[str]]:
    """Checkpoint folder -> its files, as objects in the bucket."""
    out: dict[str, set[str]] = {}
    for key in bucket.keys(f"{prefix}/ray/{run_name}"):
        folder, _, rest = key.partition("/")
        if folder.startswith("checkpoint_") and rest:
            out.setdefault(folder, set()).add(rest)
    return out


def _two_workers_on_two_nodes(records: list[dict], cluster: FakeCluster) -> None:
    head = {n["node_id"] for n in cluster.alive_nodes() if n["is_head"]}
    for tick in {r["tick"] for r in records}:
        nodes = {r["rank"]: r["node"] for r in records if r["tick"] == tick}
        assert sorted(nodes) == [0, 1] and nodes[0] != nodes[1], (tick, nodes)
        assert not set(nodes.values()) & head, (tick, nodes)  # the head cannot hold a training worker
    for r in records:  # the workers got the driver's AWS_* variables through Ray (their raylets have none)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(r["aws"]), r


def _load_snapshot_from(bucket, uri: str, tmp: Path):
    from avatar3d.gan.snapshot import load_snapshot

    local = tmp / Path(uri).name
    with bucket.filesystem.open_input_stream(uri[len("s3://"):]) as f:
        local.write_bytes(f.read())
    return load_snapshot(local)


# ----------------------------------------------------------------------- 2 workers on 2 nodes, resume

@pytest.fixture(scope="module")
def two_node_deepspeed(cluster, s3_server, head_dataset, tmp_path_factory):
    """DeepSpeed ZeRO-1 on 2 nodes: one tick, then the same run name again to two ticks (a resume from the
    bucket). -> what the tests below check; the node-loss run must end where this one did."""
    # module-scoped: set the driver's environment by hand (s3_bucket/monkeypatch are per test)
    import pyarrow.fs as pafs
    import ray

    from avatar3d.training.job import run_train_gan
    from tests.s3_server import BUCKET, S3Bucket

    endpoint, env = s3_server
    saved = {k: os.environ.get(k) for k in [*env, "RAY_ADDRESS"]}
    os.environ.update({**env, "RAY_ADDRESS": cluster.address})
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    if fs.get_file_info(BUCKET).type == pafs.FileType.NotFound:
        fs.create_dir(BUCKET)
    bucket = S3Bucket(endpoint=endpoint, bucket=BUCKET, filesystem=fs, env=env)
    tmp = tmp_path_factory.mktemp("deepspeed")
    prefix = fresh_prefix("ds2")
    out = bucket.uri(prefix)
    over = {"scaling.strategy": "deepspeed", "scaling.zero_stage": 1}
    try:
        assert not ray.is_initialized()
        t0 = time.monotonic()
        first = run_train_gan(_cfg(out, head_dataset, tmp, "ds", total_kimg=TICK_KIMG, **over),
                              after_tick=_recorder(tmp / "first"))
        t1 = time.monotonic()
        after_first = _checkpoints(bucket, prefix, "ds")
        second = run_train_gan(_cfg(out, head_dataset, tmp, "ds", total_kimg=2 * TICK_KIMG, **over),
                               after_tick=_recorder(tmp / "second"))
        t2 = time.monotonic()
        ray.shutdown()
        yield {"first": first, "second": second, "tmp": tmp, "bucket": bucket, "prefix": prefix,
               "after_first": after_first, "walls": (t1 - t0, t2 - t1)}
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_deepspeed_on_two_nodes_checkpoints_to_the_bucket_and_resumes_from_it(two_node_deepspeed, cluster):
    run = two_node_deepspeed
    first, second, tmp, bucket, prefix = run["first"], run["second"], run["tmp"], run["bucket"], run["prefix"]
    print(f"wall: first run {run['walls'][0]:.0f} s, resumed run {run['walls'][1]:.0f} s")
    _two_workers_on_two_nodes(_records(tmp / "first") + _records(tmp / "second"), cluster)
    # The first run's checkpoint is in the bucket with each rank's own files: rank 1's RNG state and ZeRO-1
    # optimiser shards were uploaded from the other node.
    (folder, files), = run["after_first"].items()
    for rank in (0, 1):
        assert any(f.startswith(f"rng_rank{rank}/") for f in files), (rank, sorted(files))
        for net in ("G", "D"):
            assert any(f.startswith(f"{net}/") and f.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
                       for f in files), (net, rank, sorted(files))
    assert any(f.startswith("loop_state/") for f in files)
    # The second run resumed from it (a restart would log kimg 0.008 twice) and ended at the configured length.
    assert first.kimg == pytest.approx(TICK_KIMG) and second.kimg == pytest.approx(2 * TICK_KIMG)
    assert second.mlflow_run_id == first.mlflow_run_id
    assert _kimg_history(second, tmp) == pytest.approx([0.008, 0.016])
    assert sorted((r["tick"], r["rank"]) for r in _records(tmp / "second")) == [(2, 0), (2, 1)]
    keys = bucket.keys(prefix)
    assert "ds/network-snapshot-final.safetensors" in keys and len(_checkpoints(bucket, prefix, "ds")) == 2
    assert not (tmp / "ray").exists() and not os.path.exists("s3:")  # nothing of Ray's storage on the local disk


def test_plain_on_two_nodes_checkpoints_to_the_bucket_and_resumes_from_it(driver, s3_bucket, head_dataset,
                                                                          tmp_path):
    from avatar3d.training.job import run_train_gan

    prefix = fresh_prefix("plain2")
    out = s3_bucket.uri(prefix)
    over = {"scaling.strategy": "plain"}
    t0 = time.monotonic()
    first = run_train_gan(_cfg(out, head_dataset, tmp_path, "plain", total_kimg=TICK_KIMG, **over),
                          after_tick=_recorder(tmp_path))
    (folder, files), = _checkpoints(s3_bucket, prefix, "plain").items()
    for rank in (0, 1):  # each rank's RNG state, uploaded from its own node
        assert any(f.startswith(f"rng_rank{rank}/") for f in files), (rank, sorted(files))
    second = run_train_gan(_cfg(out, head_dataset, tmp_path, "plain", total_kimg=2 * TICK_KIMG, **over),
                           after_tick=_recorder(tmp_path))
    print(f"wall: two plain runs {time.monotonic() - t0:.0f} s")
    _two_workers_on_two_nodes(_records(tmp_path), driver)
    assert second.kimg == pytest.approx(2 * TICK_KIMG) and second.mlflow_run_id == first.mlflow_run_id
    assert _kimg_history(second, tmp_path) == pytest.approx([0.008, 0.016])
    assert sorted((r["tick"], r["rank"]) for r in _records(tmp_path)) == [(1, 0), (1, 1), (2, 0), (2, 1)]


# ----------------------------------------------------------------------- a training node lost mid-run

def test_a_lost_training_node_resumes_from_the_last_checkpoint_in_the_bucket(driver, s3_bucket, head_dataset,
                                                                            tmp_path, two_node_deepspeed):
    """max_failures=1: rank 1's node is killed (its raylet SIGKILLed) after tick 1's checkpoint is
    registered; the worker group restarts on the nodes that remain or come up, resumes from that checkpoint in
    the bucket, and ends at the configured length, equal to the uninterrupted-by-failure run."""
    from avatar3d.training.job import run_train_gan

    cluster = driver
    prefix = fresh_prefix("loss")
    out = s3_bucket.uri(prefix)
    records, park = tmp_path / "records", tmp_path / "parked.json"
    registry = f"{s3_bucket.bucket}/{prefix}/ray/loss/checkpoint_manager_snapshot.json"
    killed: dict = {}

    def kill_rank1_node_once_tick1_is_registered():
        deadline = time.monotonic() + 600
        while not park.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        node = json.loads(park.read_text())["node"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # Ray's controller collects every rank's report (~2 s polls)
            try:
                with s3_bucket.filesystem.open_input_stream(registry) as f:
                    ticks = [r["metrics"]["tick"] for r in json.loads(f.read())["checkpoint_results"]]
            except (OSError, ValueError, KeyError):
                ticks = []
            if 1 in ticks:
                killed["registered"] = True
                break
            time.sleep(0.5)
        killed["nodes_before"] = {n["node_id"] for n in cluster.worker_nodes()}
        killed["node"] = cluster.kill_worker_node(node)
        killed["t"] = time.time()

    killer = threading.Thread(target=kill_rank1_node_once_tick1_is_registered, daemon=True)
    killer.start()
    t0 = time.time()
    result = run_train_gan(_cfg(out, head_dataset, tmp_path, "loss", total_kimg=2 * TICK_KIMG, max_failures=1,
                                **{"scaling.strategy": "deepspeed", "scaling.zero_stage": 1}),
                           after_tick=_recorder(records, park))
    wall = time.time() - t0
    killer.join(timeout=5)
    assert killed.get("node"), "the node was never killed"
    assert killed.get("registered"), "tick 1's checkpoint was not registered before the kill"
    seen = _records(records)
    before = [r for r in seen if r["t"] < killed["t"]]
    after = [r for r in seen if r["t"] > killed["t"]]
    # Tick 1 ran before the kill; the restarted group went on from its checkpoint (tick 2), on two nodes
    # other than the dead one.
    assert sorted((r["tick"], r["rank"]) for r in before) == [(1, 0), (1, 1)]
    assert sorted((r["tick"], r["rank"]) for r in after) == [(2, 0), (2, 1)]
    assert killed["node"] == [r["node"] for r in before if r["rank"] == 1][0]
    assert killed["node"] not in {r["node"] for r in after}
    _two_workers_on_two_nodes(after, cluster)
    replacement = {r["node"] for r in after} - killed["nodes_before"]
    resume_s = min(r["t"] for r in after) - killed["t"]
    print(f"node loss: killed {killed['node'][-5:]}, first tick after it {resume_s:.0f} s later, "
          f"replacement node(s) {[n[-5:] for n in replacement]}, run wall {wall:.0f} s")
    assert result.kimg == pytest.approx(2 * TICK_KIMG)
    assert _kimg_history(result, tmp_path) == pytest.approx([0.008, 0.016])  # continued, not restarted
    # ... and ended where the run without a failure (tick 1, then resumed to tick 2) did
    reference = two_node_deepspeed
    a = _load_snapshot_from(s3_bucket, result.snapshot, tmp_path).generator.state_dict()
    (tmp_path / "ref").mkdir()
    b = _load_snapshot_from(reference["bucket"], reference["second"].snapshot, tmp_path / "ref").generator.state_dict()
    import torch

    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
