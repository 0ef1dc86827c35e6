"""Run a command and record its wall time and peak memory, Ray workers included.

``/usr/bin/time -v`` sees the command's own process only where Ray's workers are not its
reaped children; this polls the whole process tree (the driver, the Ray head it starts, the
actors) every ``--interval`` seconds and keeps the largest single-process RSS and the largest
sum over the tree.

    python evaluation/realsize/measure.py --out /tmp/realsize/run.json -- avatar3d generate ...
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil


def measure(cmd: list[str], interval: float = 1.0, log=None, min_available_gb: float = 0.0) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None)
    root = psutil.Process(proc.pid)
    peak_sum = peak_one = 0
    peak_name = ""
    low_memory = False
    while proc.poll() is None:
        if min_available_gb and psutil.virtual_memory().available < min_available_gb * 2**30:
            # A shared machine: stop this command's own tree before the kernel's OOM killer picks someone else's.
            low_memory = True
            for p in reversed([root, *root.children(recursive=True)]):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            break
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            if rss > peak_one:
                peak_one, peak_name = rss, " ".join(p.cmdline()[:3])[:120]
        peak_sum = max(peak_sum, total)
        time.sleep(interval)
    return {"cmd": " ".join(cmd), "returncode": proc.wait(), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_tree_gb": round(peak_sum / 2**30, 2), "peak_rss_one_process_gb": round(peak_one / 2**30, 2),
            "peak_process": peak_name, "killed_low_memory": low_memory}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--log", default=None, help="the command's stdout+stderr (default: inherit)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--min-available-gb", type=float, default=0.0,
                   help="kill the command's process tree when the machine's available memory drops below this")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    with open(args.log, "w") if args.log else open("/dev/null", "w") as log:
        result = measure(cmd, args.interval, log if args.log else None, args.min_available_gb)
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
