"""Autoscaled dataset generation on Ray's simulated multi-node cluster (fake_multinode).

The cluster starts with a head of 1 CPU and no generation node; the node type
``gpu_node`` ({CPU: 1, GPU: 1}, 0..3 nodes) is added and removed by Ray's real
autoscaler. The tiny generation job (jobs/configs/generate_tiny.yaml) runs with
``min_actors=1 max_actors=3 gpus_per_actor=1``: each painter actor needs a GPU,
so every actor needs its own node. Recorded, sampled once a second over the
dashboard's state API while the job runs and until the nodes are gone again:

* time to first row (job start -> first block at the driver), and to each node / actor;
* pool size (ALIVE painter actors) and worker node count over time, incl. scale-down after the idle timeout;
* rows/s at each pool size (rows arriving while the pool had k actors / time the pool had k actors).

What this is NOT: a GPU benchmark. The "nodes" are extra raylets on one
2-core machine and their GPUs are labels; the actors paint on the CPU (each
says so once). rows/s measures how 1..3 processes share the same 2 cores.

    OMP_NUM_THREADS=1 .venv/bin/python evaluation/cluster/bench_autoscaling.py --n 96 \\
        --out evaluation/cluster/results.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.cluster.fake_cluster import FakeCluster, ray_env  # noqa: E402

TINY_YAML = REPO / "jobs" / "configs" / "generate_tiny.yaml"
PAINTER = "ControlNetPainter"


def make_config(args, output_dir):
    from avatar3d.config import load_config
    from avatar3d.datagen.job import GenerateConfig

    return load_config(GenerateConfig, str(TINY_YAML), [
        f"num_samples={args.n}", f"batch_size={args.batch_size}", f"rows_per_file={args.batch_size}",
        f"guidance_batch_size={args.batch_size}", f"pipeline.steps={args.steps}", f"output_dir={output_dir}",
        "min_actors=1", f"max_actors={args.max_nodes}", "gpus_per_actor=1", "cpus_per_actor=1",
        "tracking.enabled=false", "progress_interval_s=10",
    ])


class Sampler(threading.Thread):
    """Once per ``every`` s: worker nodes, painter actors by state, rows at the driver so far."""

    def __init__(self, cluster: FakeCluster, t0: float, rows: "_RowCount", every: float = 1.0):
        super().__init__(daemon=True)
        self.cluster, self.t0, self.rows, self.every = cluster, t0, rows, every
        self.samples: list[dict] = []
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            t = time.time()
            try:
                nodes = len(self.cluster.worker_nodes())
                actors = self.cluster.actors(PAINTER)
            except Exception:  # noqa: BLE001 - a slow dashboard: skip this sample
                self.stop_event.wait(self.every)
                continue
            states = [a["state"] for a in actors]
            self.samples.append({
                "t": round(t - self.t0, 2), "nodes": nodes, "actors_alive": states.count("ALIVE"),
                "actors_pending": sum(s in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING") for s in states),
                "rows": int(self.rows),
            })
            self.stop_event.wait(max(0.0, self.every - (time.time() - t)))


class _RowCount:
    """Rows at the driver so far, read by the sampler thread."""

    def __init__(self, batches):
        self.batches = batches

    def __int__(self):
        return sum(b["rows"] for b in list(self.batches))


def first_time(samples, key, value):
    return next((s["t"] for s in samples if s[key] >= value), None)


def rows_per_pool_size(samples, batches, t_first, t_last):
    """Per pool size k (ALIVE painters): seconds the pool had k over [first row, last row], rows painted
    then (a batch counts at the end of its painter call), rows/s, and the mean seconds of one painter
    call (one batch) then: how k actors share the machine's cores."""
    out = {}
    for a, b in zip(samples, samples[1:]):
        lo, hi = max(a["t"], t_first), min(b["t"], t_last)
        if hi <= lo:
            continue
        d = out.setdefault(a["actors_alive"], {"seconds": 0.0, "rows": 0, "calls": []})
        d["seconds"] += hi - lo
        for bt in batches:
            if lo < bt["painted"] <= hi:
                d["rows"] += bt["rows"]
                d["calls"].append(bt["call_s"])
    for d in out.values():
        d["rows_per_s"] = round(d["rows"] / d["seconds"], 2) if d["seconds"] else None
        d["s_per_batch_call"] = round(sum(d["calls"]) / len(d["calls"]), 2) if d["calls"] else None
        d["seconds"] = round(d["seconds"], 1)
        del d["calls"]
    return dict(sorted(out.items()))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=96, help="rows to generate")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-nodes", type=int, default=3, help="gpu_node max_workers = max_actors")
    ap.add_argument("--idle-timeout-min", type=float, default=0.25, help="autoscaler idle_timeout_minutes")
    ap.add_argument("--scale-down-timeout", type=float, default=180)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    os.environ.update(ray_env())  # this process is the job's driver: same environment as the cluster
    import ray

    from avatar3d.datagen.job import run_generation
    from avatar3d.datagen.shards import read_dataset

    temp = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    arrivals: list[dict] = []  # one per block (= one batch) at the driver
    load_before = os.getloadavg()
    try:
        with FakeCluster(temp / "c", {"CPU": 1},
                         {"gpu_node": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": args.max_nodes}},
                         idle_timeout_minutes=args.idle_timeout_min) as cluster:
            assert not cluster.worker_nodes(), "the cluster must start with no generation node"
            cfg = make_config(args, temp / "ds")
            t0 = time.time()
            sampler = Sampler(cluster, t0, _RowCount(arrivals))
            sampler.start()
            ray.init(address=cluster.address, log_to_driver=True)
            try:
                def on_batch(info):
                    arrivals.append({
                        "t": round(info["arrival"] - t0, 2), "rows": info["rows"],
                        "painted": round(float(max(info["call_end"])) - t0, 2),  # one node: one clock
                        "call_s": round(float(max(info["call_end"]) - min(info["call_start"])), 3),
                    })

                result = run_generation(cfg, on_batch=on_batch)
            finally:
                ray.shutdown()
            t_done = time.time() - t0
            scale_down_s = cluster.wait_for_workers(0, timeout=args.scale_down_timeout)
            time.sleep(2)  # one more sample showing 0 nodes
            sampler.stop_event.set()
            sampler.join()
        table = read_dataset(str(temp / "ds"))
        ids = sorted(int(i) for i in table.column("id").to_pylist())
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    samples = sampler.samples
    t_first = min(b["t"] for b in arrivals)
    t_last = max(b["painted"] for b in arrivals)
    peak_nodes = max(s["nodes"] for s in samples)
    peak_actors = max(s["actors_alive"] for s in samples)
    res = {
        "what": "tiny generation on Ray's fake_multinode cluster: head {CPU:1}, gpu_node {CPU:1, GPU:1} x 0..%d "
                "(GPUs are labels, all nodes share one machine)" % args.max_nodes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
                    "loadavg_1_5_15_before": [round(x, 1) for x in load_before],
                    "loadavg_1_5_15_after": [round(x, 1) for x in os.getloadavg()]},
        "args": vars(args),
        "rows": len(ids), "unique_ids_ok": ids == list(range(args.n)),
        "job_wall_s": round(t_done, 1),
        "time_to_first_row_s": t_first,
        "time_to_node": {k: first_time(samples, "nodes", k) for k in range(1, peak_nodes + 1)},
        "time_to_actor": {k: first_time(samples, "actors_alive", k) for k in range(1, peak_actors + 1)},
        "peak_nodes": peak_nodes, "peak_pool_size": peak_actors,
        "scale_down_s_after_job": round(scale_down_s, 1),
        "rows_per_s_first_to_last_row": round(args.n / (t_last - t_first), 2),
        "rows_per_s_by_pool_size": rows_per_pool_size(samples, arrivals, t_first, t_last),
        "images_per_s_job": result.images_per_s,
        "batches": arrivals,
        "samples": samples,
    }
    print_table(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


def print_table(res):
    print(f"\n{res['rows']} rows (ids 0..N-1 unique: {res['unique_ids_ok']}), job {res['job_wall_s']} s, "
          f"first row at {res['time_to_first_row_s']} s, peak {res['peak_nodes']} nodes / pool {res['peak_pool_size']}")
    print("node k up at (s):", res["time_to_node"], " actor k alive at (s):", res["time_to_actor"])
    print(f"all worker nodes gone {res['scale_down_s_after_job']} s after the job ended")
    print(f"load average before / after: {res['machine']['loadavg_1_5_15_before']} / "
          f"{res['machine']['loadavg_1_5_15_after']}")
    print("| pool size | seconds | rows painted | rows/s | s per batch call |\n|---|---|---|---|---|")
    for k, d in res["rows_per_s_by_pool_size"].items():
        print(f"| {k} | {d['seconds']} | {d['rows']} | {d['rows_per_s']} | {d['s_per_batch_call']} |")
    print("\n| t (s) | nodes | actors alive | pending | rows |\n|---|---|---|---|---|")
    last = None
    for s in res["samples"]:
        key = (s["nodes"], s["actors_alive"], s["actors_pending"])
        if key != last:
            print(f"| {s['t']} | {s['nodes']} | {s['actors_alive']} | {s['actors_pending']} | {s['rows']} |")
            last = key


if __name__ == "__main__":
    main()
