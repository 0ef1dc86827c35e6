"""The caching CPU allocator, each case in a fresh interpreter (it is process-wide once installed)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_and_results_unchanged():
    out = _run("""
        import json, resource, torch, torch.nn.functional as F
        from avatar3d import native
        torch.set_num_threads(1)
        torch.manual_seed(0)
        x = torch.randn(4, 64, 32, 32); w = torch.randn(64, 64, 3, 3)
        ref = F.conv2d(x, w, padding=1).sum().item(), torch.exp(torch.linspace(-3, 3, 10 ** 6)).sum().item()
        assert native.install_caching_cpu_allocator(512)
        def work():
            y = F.conv2d(x, w, padding=1)            # oneDNN, scratchpads through raw_allocate
            big = torch.exp(torch.linspace(-3, 3, 10 ** 6))  # 4 MB
            mid = torch.ones(300_000)                # 1.2 MB, rounded to the MB
            small = torch.ones(1000)                 # not cached
            return y.sum().item(), big.sum().item(), float(mid.sum() + small.sum())
        first = work()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        again = [work() for _ in range(5)]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps({"ref": ref, "first": first, "again": again, "stats": native.caching_allocator_stats(),
                          "faults": faults}))
    """)
    assert out["first"][:2] == pytest.approx(out["ref"], rel=1e-6)
    assert all(a == out["first"] for a in out["again"])  # same numbers from reused blocks
    stats = out["stats"]
    assert stats["installed"] == 1 and stats["limit"] == 512 << 20
    assert stats["hits"] >= 10 and stats["cached_bytes"] > 0
    assert out["faults"] < 200  # without the cache: ~1000 pages faulted in per pass for the 4 MB block alone


def test_limit_bounds_the_cache_and_empty_cache_releases():
    out = _run("""
        import json, torch
        from avatar3d import native
        assert native.install_caching_cpu_allocator(8)   # 8 MB of free blocks at most
        blocks = [torch.empty(1 << 20) for _ in range(6)]  # 6 x 4 MB (+ header, rounded to 5 MB)
        del blocks
        capped = native.caching_allocator_stats()["cached_bytes"]
        released = native.empty_caching_allocator()
        print(json.dumps({"capped": capped, "released": released,
                          "after": native.caching_allocator_stats()["cached_bytes"]}))
    """)
    assert 0 < out["capped"] <= 8 << 20
    assert out["released"] == out["capped"] and out["after"] == 0


def test_runtime_switch_reads_the_environment():
    out = _run("""
        import json
        from avatar3d.runtime import use_caching_cpu_allocator
        from avatar3d import native
        print(json.dumps({"gpu": use_caching_cpu_allocator("cuda:0"), "off": use_caching_cpu_allocator("cpu"),
                          "stats": native.caching_allocator_stats()}))
    """, AVATAR3D_CPU_CACHE_MB="0")
    assert out == {"gpu": False, "off": False, "stats": None}
    bad = subprocess.run([sys.executable, "-c", "from avatar3d.runtime import use_caching_cpu_allocator as u; u()"],
                         capture_output=True, text=True, env={**os.environ, "AVATAR3D_CPU_CACHE_MB": "lots"})
    assert bad.returncode != 0 and "AVATAR3D_CPU_CACHE_MB='lots': pass a whole number of megabytes" in bad.stderr
