"""Which C allocator a CPU training process of the GAN should run with.

torch allocates CPU tensors with ``posix_memalign``; with glibc's defaults the
large blocks of a training step are mmapped and unmapped (or trimmed) again
each time, so every step faults its activations in afresh. This measures
``bench_throughput.py`` (training step img/s, G forward renders/s, per CPU-second)
under each allocator setting, each run a fresh process started with that
environment, the variants interleaved round by round (this machine's speed
drifts between processes), and records the child's peak RSS and page faults.

    OMP_NUM_THREADS=1 python evaluation/gan/bench_allocators.py --configs A --rounds 3 --iters 5

``--checkout DIR`` measures another checkout's ``bench_throughput.py`` (with DIR on
``PYTHONPATH``); the ``custom`` variant is the caching allocator that commit
fbf6bd8 installed from ``avatar3d/native`` and only exists in such a checkout:

    git archive fbf6bd8 | tar -x -C /tmp/old
    OMP_NUM_THREADS=1 python evaluation/gan/bench_allocators.py --checkout /tmp/old \\
        --variants custom glibc glibc-tuned jemalloc --configs A --rounds 3 --iters 5
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
# Whatever allocator settings this process inherited (the Makefile exports GLIBC_TUNABLES)
# are cleared first, so "glibc" means glibc's defaults.
CLEAR = {"GLIBC_TUNABLES": "", "LD_PRELOAD": "", "MALLOC_CONF": ""}
# Each variant's environment. AVATAR3D_CPU_CACHE_MB only means something to a pre-removal
# checkout: 0 there turns its caching allocator off, so glibc (or jemalloc) serves torch.
VARIANTS = {
    "custom": {"AVATAR3D_CPU_CACHE_MB": "8192"},
    "glibc": {"AVATAR3D_CPU_CACHE_MB": "0"},
    # Never mmap, never give the top of the heap back: freed blocks stay mapped for reuse.
    "glibc-tuned": {"AVATAR3D_CPU_CACHE_MB": "0",
                    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=8589934592"},
    # The largest fixed mmap threshold glibc accepts (32 MB); bigger blocks are still mmapped.
    "glibc-mmap32": {"AVATAR3D_CPU_CACHE_MB": "0",
                     "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=8589934592"},
    "jemalloc": {"AVATAR3D_CPU_CACHE_MB": "0", "LD_PRELOAD": JEMALLOC},
    # jemalloc's decay returns freed pages to the OS within seconds (smoothly, so some at once); off here.
    "jemalloc-tuned": {"AVATAR3D_CPU_CACHE_MB": "0", "LD_PRELOAD": JEMALLOC,
                       "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
}


def run_once(bench: Path, root: Path, config: str, iters: int, env_extra: dict[str, str]) -> dict:
    """One fresh ``bench_throughput.py`` process; its rates plus peak RSS and page faults."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one.json"
        env = {**os.environ, **CLEAR, **env_extra, "PYTHONPATH": str(root)}
        cmd = [sys.executable, str(bench), "--configs", config, "--iters", str(iters), "--out", str(out), "--no-flops"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"bench_allocators: {shlex.join(cmd)} failed with {env_extra}")
        run = json.loads(out.read_text())["runs"][0]
    return {"images_per_s": run["images_per_s"], "renders_per_s": run["renders_per_s"],
            "max_rss_gb": usage.ru_maxrss / 2 ** 20, "minor_faults": usage.ru_minflt,
            "load_avg_1min": run["load_avg_1min"]}


def summarise(runs: list[dict]) -> dict:
    out = {"runs": runs}
    for key in ("images_per_s", "renders_per_s", "max_rss_gb", "minor_faults"):
        vals = [r[key] for r in runs]
        out[key] = statistics.median(vals)
        out[f"{key}_range"] = [min(vals), max(vals)]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["A"])
    ap.add_argument("--variants", nargs="+", default=["glibc", "glibc-tuned", "jemalloc"], choices=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per variant, interleaved")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--checkout", default=str(Path(__file__).resolve().parents[2]))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "allocators.json"))
    args = ap.parse_args()
    root = Path(args.checkout).resolve()
    bench = root / "evaluation" / "gan" / "bench_throughput.py"
    if any(v.startswith("jemalloc") for v in args.variants) and not Path(JEMALLOC).exists():
        raise SystemExit(f"bench_allocators: {JEMALLOC} is missing (apt-get install libjemalloc2)")
    results = {"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), "checkout": str(root),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "variants": {v: VARIANTS[v] for v in args.variants}, "configs": {}}
    for config in args.configs:
        runs: dict[str, list[dict]] = {v: [] for v in args.variants}
        for _ in range(args.rounds):
            for v in args.variants:
                runs[v].append(run_once(bench, root, config, args.iters, VARIANTS[v]))
                r = runs[v][-1]
                print(f"{config} {v:13s} step {r['images_per_s']:.3f} img/s  forward {r['renders_per_s']:.2f} "
                      f"renders/s  rss {r['max_rss_gb']:.2f} GB  faults {r['minor_faults']}", flush=True)
        results["configs"][config] = {v: summarise(rs) for v, rs in runs.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
