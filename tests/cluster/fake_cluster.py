"""Ray's simulated multi-node cluster (the ``fake_multinode`` provider), started and stopped as one process group.

Worker nodes here are real raylets on this machine, launched and terminated
by Ray's real autoscaler (its monitor process runs the fake provider); their
GPUs are labels only. Ray ships ``ray.cluster_utils.AutoscalingCluster`` for
this, but its ``start()`` and ``shutdown()`` run ``ray stop --force``, which
ends every Ray process of the user on the machine, and the PyPI wheel lacks
the base config it reads. So the config is built here and the head runs as
``ray start --head --block`` in its own session: the GCS, the monitor, and
every node the monitor starts descend from it, and :meth:`FakeCluster.stop`
ends exactly that group.

Used by the cluster tests (tests/cluster/) and the recorded benchmark in
evaluation/cluster/.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY_BIN = Path(sys.executable).parent / "ray"
HEAD_NODE_TYPE = "ray.head.default"
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the provider's id for the head


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of a test cluster and its clients: no usage stats, no token auth, the venv first on PATH."""
    env = dict(os.environ)
    env.update({
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Ray 2.60 turns token auth on for `ray start`; clients would then need the token.
        "RAY_AUTH_MODE": "disabled",
        # Job drivers and workers run `python` from the head's PATH: it must be this venv's.
        "PATH": f"{RAY_BIN.parent}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(RAY_BIN.parent.parent),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        # On SIGTERM, shut down at once instead of draining the node first.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    })
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the group leader (`ray start --block` shuts its node down in order), then SIGKILL the rest."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
        time.sleep(1)
    proc.wait(timeout=10)
    assert not group_alive(pgid), f"processes of the Ray head group {pgid} survived SIGKILL"


def fake_cluster_config(head_resources: dict, worker_node_types: dict, gcs_address: str,
                        idle_timeout_minutes: float) -> dict:
    """The autoscaler config of a fake_multinode cluster: what Ray's missing example.yaml would hold."""
    types = {name: {"resources": dict(t["resources"]), "node_config": {},
                    "min_workers": t.get("min_workers", 0), "max_workers": t["max_workers"]}
             for name, t in worker_node_types.items()}
    types[HEAD_NODE_TYPE] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake_multinode",
        "max_workers": sum(t["max_workers"] for t in worker_node_types.values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # Worker raylets join this GCS (the provider's default is <machine ip>:6379).
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
        "idle_timeout_minutes": idle_timeout_minutes,
        "upscaling_speed": 10.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeCluster:
    """A head with the fake_multinode autoscaler; worker nodes come and go as the autoscaler decides.

    ``head_resources`` may hold CPU, GPU and custom resources; ``worker_node_types``
    maps a type name to ``{"resources": {...}, "max_workers": n[, "min_workers": m]}``.
    Clients join through :attr:`address` (``ray.init(address=...)`` or RAY_ADDRESS).
    """

    def __init__(self, temp_root: Path, head_resources: dict, worker_node_types: dict,
                 idle_timeout_minutes: float = 0.5, env: dict | None = None):
        self.temp_root = Path(temp_root)
        self.temp_root.mkdir(parents=True, exist_ok=True)
        self.env = env or ray_env()
        self.gcs_port, self.dashboard_port, self.agent_port, self.client_port = free_ports(4)
        # The machine's own address, not 127.0.0.1: Ray clients turn a loopback address into the node's IP.
        from ray._private.services import get_node_ip_address

        self.node_ip = get_node_ip_address()
        self.address = f"{self.node_ip}:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = self.temp_root / "head.log"
        head = dict(head_resources)
        config = fake_cluster_config(head, worker_node_types, self.address, idle_timeout_minutes)
        config_path = self.temp_root / "autoscaler.json"
        config_path.write_text(json.dumps(config, indent=2))
        cmd = [
            str(RAY_BIN), "start", "--head", "--block",
            f"--autoscaling-config={config_path}",
            "--node-ip-address", self.node_ip,
            "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(self.agent_port),
            "--ray-client-server-port", str(self.client_port),
            "--num-cpus", str(head.pop("CPU", 1)),
            "--num-gpus", str(head.pop("GPU", 0)),
            # A short private temp dir: socket paths stay under the 107-char limit and
            # this cluster never touches another session's /tmp/ray.
            "--temp-dir", str(self.temp_root / "ray"),
            "--disable-usage-stats",
        ]
        if head:
            cmd += ["--resources", json.dumps(head)]
        run_env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    # ------------------------------------------------------------------ life cycle

    def wait_until_up(self, timeout: float = 120) -> None:
        """Until the head node is alive in the GCS (checked from a throwaway client process)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.alive_nodes(timeout=20):
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(1)
        raise TimeoutError(f"the fake cluster at {self.address} is not up after {timeout:.0f} s:\n"
                           f"{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_group(self.proc)

    def __enter__(self) -> "FakeCluster":
        try:
            self.wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ looking at the cluster

    def alive_nodes(self, timeout: float = 30) -> list[dict]:
        """``[{"node_id", "resources", "is_head"}]`` of the nodes alive now, head included.

        Read from the dashboard's state API over HTTP (no ``ray.init``), so the
        caller's own Ray session, if any, is untouched.
        """
        import urllib.request

        url = f"{self.dashboard}/api/v0/nodes?limit=1000&detail=true"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read())
        out = []
        for info in body["data"]["result"]["result"]:
            if info.get("state") != "ALIVE":
                continue
            out.append({
                "node_id": info["node_id"],
                "resources": dict(info.get("resources_total") or {}),
                "is_head": bool(info.get("is_head_node")),
            })
        return out

    def worker_nodes(self) -> list[dict]:
        return [n for n in self.alive_nodes() if not n["is_head"]]

    def wait_for_workers(self, count: int, timeout: float, at_most: bool = False) -> float:
        """Seconds until exactly ``count`` worker nodes are alive (``at_most``: no more than ``count``)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            n = len(self.worker_nodes())
            if (n <= count) if at_most else (n == count):
                return time.monotonic() - start
            time.sleep(1)
        raise TimeoutError(f"{len(self.worker_nodes())} worker nodes after {timeout:.0f} s, waited for "
                           f"{'at most ' if at_most else ''}{count}:\n{self.monitor_log_tail()}")

    def monitor_log_tail(self, chars: int = 3000) -> str:
        logs = sorted((self.temp_root / "ray").glob("session_*/logs/monitor.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else "(no monitor.log)"

    def raylet_pids(self) -> dict[str, int]:
        """Fake node id (the provider's ``fff...0000n``, also the node's Ray id) -> pid of that worker node's raylet."""
        import psutil

        pgid = self.proc.pid
        out = {}
        for p in psutil.process_iter(["pid", "name"]):
            try:
                if p.info["name"] != "raylet" or os.getpgid(p.pid) != pgid:
                    continue
                node = p.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
            except (ProcessLookupError, psutil.Error):
                continue
            if node and node != FAKE_HEAD_NODE_ID:
                out[node] = p.pid
        return out

    def kill_worker_node(self, node_id: str | None = None) -> str:
        """SIGKILL one worker node's raylet (the first one if ``node_id`` is None); returns its id."""
        pids = self.raylet_pids()
        if not pids:
            raise RuntimeError("no worker node raylet to kill")
        node_id = node_id or sorted(pids)[0]
        os.kill(pids[node_id], signal.SIGKILL)
        return node_id

    def actors(self, class_contains: str | None = None, timeout: float = 30) -> list[dict]:
        """``[{"actor_id", "class_name", "state", "node_id", "pid"}]`` of the cluster's actors, any state
        (``PENDING_CREATION``, ``ALIVE``, ``RESTARTING``, ``DEAD``), read over the dashboard like :meth:`alive_nodes`.

        ``class_contains`` keeps the actors whose class name holds it (Ray Data's pool
        actors are named ``MapWorker(MapBatches(<callable class>))``).
        """
        import urllib.request

        url = f"{self.dashboard}/api/v0/actors?limit=10000&detail=true"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read())
        out = []
        for info in body["data"]["result"]["result"]:
            name = info.get("class_name") or ""
            if class_contains and class_contains not in name:
                continue
            out.append({"actor_id": info.get("actor_id"), "class_name": name, "state": info.get("state"),
                        "node_id": info.get("node_id"), "pid": info.get("pid")})
        return out

    def worker_logs(self, pid: int) -> str:
        """What worker process ``pid`` wrote to its stdout and stderr files (``worker-*-<pid>.out/.err``).

        Read from the files, not the driver's console: every node of this cluster
        shares one session folder, so each node's log monitor forwards every
        worker's lines and a driver sees each line once per node.
        """
        text = []
        # session_latest links to the session folder: resolve, or every file is read twice.
        for path in sorted({p.resolve() for p in (self.temp_root / "ray").glob(f"session_*/logs/worker-*-{pid}.*")}):
            if path.suffix in (".out", ".err"):
                text.append(f"==> {path.name} <==\n" + path.read_text(errors="replace"))
        return "".join(text)
