"""Autoscaled generation on Ray's simulated multi-node cluster (tests/cluster/fake_cluster.py).

The cluster starts with a 1-CPU head and no generation node; node type
``gpu_node`` ({CPU: 1, GPU: 1}) is added and removed by Ray's real autoscaler
(fake_multinode provider: real raylets on this machine, GPUs as labels). The
job runs as a user runs it: ``avatar3d generate`` in a subprocess that joins
the cluster through ``RAY_ADDRESS``. While it runs, the test polls the
dashboard's state API once a second for worker nodes, painter actors and rows
on disk.

All are ``@pytest.mark.slow`` (``make test-slow``; simulated clusters take minutes):

* one node comes for the job and goes after the idle timeout, exactly N
  rows, and the painter (a GPU label, no CUDA) paints on the CPU and says so
  once (~2 min on 2 cores);
* the pool grows to 3 actors on 3
  nodes and the nodes go away after the job;
* a generation node's raylet SIGKILLed mid-job, with the driver or the
  workers writing the shards: the job still ends with exactly N unique
  decodable rows.

Each cluster is one process group stopped by :class:`FakeCluster`; nothing
runs ``ray stop``. Everything is written under a temp folder in /tmp.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster.fake_cluster import RAY_BIN, FakeCluster, ray_env

REPO = Path(__file__).resolve().parents[2]
AVATAR3D_BIN = Path(sys.executable).parent / "avatar3d"
TINY_YAML = REPO / "jobs" / "configs" / "generate_tiny.yaml"
PAINTER = "Painter"  # the actor's class name: MapBatches(ControlNetPainter) or MapBatches(ShardPainter)
CPU_LINE = "but runs the diffusion pipeline on the CPU: torch sees no CUDA device"  # avatar3d/datagen/pipeline.py

pytestmark = pytest.mark.skipif(not RAY_BIN.exists() or not AVATAR3D_BIN.exists(),
                                reason=f"no `ray` / `avatar3d` executable next to {sys.executable}")


@pytest.fixture
def temp_root():
    # Short and outside the checkout: Ray's socket paths must stay under 107 characters.
    root = Path(tempfile.mkdtemp(prefix="as", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _cluster(temp_root: Path, max_nodes: int, idle_timeout_minutes: float) -> FakeCluster:
    return FakeCluster(temp_root / "c", {"CPU": 1},
                       {"gpu_node": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": max_nodes}},
                       idle_timeout_minutes=idle_timeout_minutes)


def _rows_on_disk(out: Path) -> int:
    import pyarrow.parquet as pq

    from avatar3d.datagen.shards import list_shards

    total = 0
    for path in list_shards(out):
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except (OSError, ValueError):  # renamed away between list and read
            pass
    return total


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def run_job(cluster: FakeCluster, temp_root: Path, n: int, max_actors: int, timeout: float,
            on_poll=None, overrides: tuple[str, ...] = ()) -> dict:
    """``avatar3d generate`` (tiny preset, gpus_per_actor=1) against the cluster; polled once a second.

    ``on_poll(sample)`` may act on the cluster mid-job (the node-loss test kills a node there).
    """
    out = temp_root / "ds"
    cmd = [str(AVATAR3D_BIN), "generate", "--config", str(TINY_YAML), f"num_samples={n}", "batch_size=4",
           "rows_per_file=4", "guidance_batch_size=4", "min_actors=1", f"max_actors={max_actors}",
           "gpus_per_actor=1", "cpus_per_actor=1", f"output_dir={out}", "tracking.enabled=false", *overrides]
    env = ray_env(RAY_ADDRESS=cluster.address, RAY_DEDUP_LOGS="0", AVATAR3D_CACHE_DIR=str(temp_root / "cache"))
    log_path = temp_root / "driver.log"
    samples = []
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=temp_root, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout:
                    raise AssertionError(f"the job ran past {timeout:.0f} s:\n{log_path.read_text()[-4000:]}\n"
                                         f"{cluster.monitor_log_tail()}")
                try:
                    actors = cluster.actors(PAINTER)
                    sample = {"t": round(time.monotonic() - t0, 1), "nodes": len(cluster.worker_nodes()),
                              "actors_alive": [a for a in actors if a["state"] == "ALIVE"],
                              "rows": _rows_on_disk(out)}
                except (OSError, ValueError):  # a busy dashboard: next second
                    sample = None
                if sample is not None:
                    samples.append(sample)
                    if on_poll is not None:
                        on_poll(sample)
                time.sleep(1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, f"avatar3d generate failed ({proc.returncode}):\n{text[-6000:]}"
    return {"out": out, "log": text, "samples": samples, "wall_s": time.monotonic() - t0}


def check_dataset(out: Path, n: int) -> None:
    """Exactly ``n`` rows, ids 0..n-1 once each, every PNG decodable at the configured size."""
    from PIL import Image

    from avatar3d.datagen.shards import read_dataset

    table = read_dataset(out, columns=["id", "image_png", "width", "height"])
    ids = table.column("id").to_pylist()
    assert len(ids) == n, f"{len(ids)} rows, expected {n}"
    assert sorted(int(i) for i in ids) == list(range(n)), "ids are not 0..N-1, each once"
    for png, w, h in zip(*(table.column(c).to_pylist() for c in ("image_png", "width", "height"))):
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.size == (w, h)


def check_said_cpu_once(cluster: FakeCluster, job: dict) -> int:
    """Every painter process (a GPU label, no CUDA) says once, in its own log, that it paints on the CPU.

    Counted in each worker's log file: on this cluster every node's log monitor
    forwards every worker's lines, so the driver's console shows each line once per node.
    Returns how many painters were checked.
    """
    assert CPU_LINE in job["log"], f"the driver never showed a painter saying it runs on the CPU:\n{job['log'][-4000:]}"
    pids = {a["pid"] for s in job["samples"] for a in s["actors_alive"] if a["pid"]}
    assert pids, "no ALIVE painter actor was seen"
    said = {pid: cluster.worker_logs(pid).count(CPU_LINE) for pid in pids}
    assert all(count == 1 for count in said.values()), (
        f"times each painter pid said it (want 1 each): {said}\n"
        + "\n".join(f"{p}: {cluster.worker_logs(p)[-3000:]}" for p in said))
    return len(pids)


@pytest.mark.slow
def test_autoscaled_generation_adds_a_node_and_removes_it_when_idle(temp_root):
    """No generation node at start; the job's one GPU actor brings one, it leaves after the job.

    Slow (a simulated cluster, 2-3 minutes): the default suite keeps its time for the generation job itself."""
    n = 8
    with _cluster(temp_root, max_nodes=1, idle_timeout_minutes=0.1) as cluster:
        assert cluster.worker_nodes() == []
        job = run_job(cluster, temp_root, n, max_actors=1, timeout=300)
        samples = job["samples"]
        assert max(s["nodes"] for s in samples) == 1, samples
        alive_on = {a["node_id"] for s in samples for a in s["actors_alive"]}
        head = {nd["node_id"] for nd in cluster.alive_nodes() if nd["is_head"]}
        assert alive_on and not alive_on & head, "the painter must run on an added gpu_node, not the head"
        check_dataset(job["out"], n)
        check_said_cpu_once(cluster, job)
        cluster.wait_for_workers(0, timeout=120)


@pytest.mark.slow
def test_autoscaled_generation_pool_grows_to_three_nodes_and_shrinks_after(temp_root):
    """min_actors=1 max_actors=3 gpus_per_actor=1: 3 nodes, 3 ALIVE painters, exactly N rows, then 0 nodes."""
    n = 480  # ~3 rows/s on 2 cores: long enough for Ray Data to grow the pool while the queue is full
    with _cluster(temp_root, max_nodes=3, idle_timeout_minutes=0.25) as cluster:
        assert cluster.worker_nodes() == []
        job = run_job(cluster, temp_root, n, max_actors=3, timeout=900)
        samples = job["samples"]
        peak_pool = max(len(s["actors_alive"]) for s in samples)
        peak_nodes = max(s["nodes"] for s in samples)
        assert (peak_pool, peak_nodes) == (3, 3), [(s["t"], s["nodes"], len(s["actors_alive"])) for s in samples]
        at_three = [s for s in samples if len(s["actors_alive"]) == 3]
        assert len({a["node_id"] for a in at_three[0]["actors_alive"]}) == 3, "one GPU actor per node"
        check_dataset(job["out"], n)
        assert check_said_cpu_once(cluster, job) >= 3
        gone_s = cluster.wait_for_workers(0, timeout=180)
        print(f"job {job['wall_s']:.0f} s, pool of 3 from {at_three[0]['t']} s, {samples[-1]['nodes']} nodes at the "
              f"last poll of the job, 0 nodes {gone_s:.0f} s after the checks")


@pytest.mark.slow
@pytest.mark.parametrize("shard_writer", ["driver", "workers"])
def test_generation_survives_sigkill_of_a_generation_node(temp_root, shard_writer):
    """A painter node's raylet SIGKILLed once rows are on disk: the job still ends with exactly N unique rows.

    With ``shard_writer=workers`` the killed node's actor may have staged a shard the driver never
    committed, or have its block retried on the other node: still no duplicate, no half shard."""
    n = 160
    killed = {}

    def kill_mid_job(sample):
        if killed or not (8 <= sample["rows"] <= n // 2) or not sample["actors_alive"]:
            return
        victim = sample["actors_alive"][0]["node_id"]
        if victim not in cluster.raylet_pids():
            return
        killed.update(node=cluster.kill_worker_node(victim), rows=sample["rows"], t=sample["t"])

    with _cluster(temp_root, max_nodes=2, idle_timeout_minutes=0.25) as cluster:
        job = run_job(cluster, temp_root, n, max_actors=2, timeout=900, on_poll=kill_mid_job,
                      overrides=(f"shard_writer={shard_writer}",))
        assert killed, f"no node was killed: {[(s['t'], s['rows']) for s in job['samples']]}"
        assert killed["rows"] < n, "the kill came after the last row"
        assert killed["node"] not in {nd["node_id"] for nd in cluster.alive_nodes()}, "the killed node is alive"
        after = [s["rows"] for s in job["samples"] if s["t"] > killed["t"]]
        assert max(after, default=n) > killed["rows"], "no rows were written after the kill"
        check_dataset(job["out"], n)
        if shard_writer == "workers":  # shards of at most rows_per_file=4 rows, each named by its lowest index
            from avatar3d.datagen.shards import STAGED_PREFIX, list_shards

            assert all(1 <= pq_rows(p) <= 4 for p in list_shards(job["out"]))
            leftovers = list((job["out"] / "shards").glob(STAGED_PREFIX + "*"))
            print(f"staged but never committed (debris the next resume removes): {[p.name for p in leftovers]}")
        print(f"killed {killed['node'][-6:]} at {killed['t']} s with {killed['rows']}/{n} rows on disk; "
              f"job {job['wall_s']:.0f} s")
