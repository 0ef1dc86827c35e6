"""Prompt-set throughput and CLIP token lengths (the prompt stage, docs/method.md section 2).

Prints samples per second for ``sample_prompts`` (one process, one thread)
and the distribution of CLIP BPE token counts of prompts and negative prompts,
which must stay <= 75 (77 with BOS/EOS) or Stable Diffusion drops the tail.
Token counts need openai-clip's BPE tokenizer; they are skipped without it.

    OMP_NUM_THREADS=1 python evaluation/prompts/bench_prompts.py --n 20000
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import sysconfig
import time
from pathlib import Path

import numpy as np

from avatar3d.prompts import sample_prompts


def _clip_tokenizer():
    path = Path(sysconfig.get_paths()["purelib"]) / "clip" / "simple_tokenizer.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sample_prompts(10, args.seed)  # load the YAML files once before timing
    t0 = time.perf_counter()
    samples = sample_prompts(args.n, args.seed)
    dt = time.perf_counter() - t0
    print(f"sample_prompts: {args.n} samples in {dt:.2f} s = {args.n / dt:,.0f} samples/s "
          f"({dt / args.n * 1e6:.0f} us/sample); 500,000 would take {500_000 * dt / args.n:.0f} s")
    views = collections.Counter(s.view for s in samples)
    print("views:", {k: f"{v / args.n:.3f}" for k, v in sorted(views.items())})
    styles = collections.Counter(s.style for s in samples)
    print(f"styles: {len(styles)} used, min {min(styles.values())} max {max(styles.values())} per style")

    tokenizer = _clip_tokenizer()
    if tokenizer is None:
        print("CLIP token counts: skipped (openai-clip not installed)")
        return
    for field in ("prompt", "negative_prompt"):
        counts = np.array([len(tokenizer.encode(getattr(s, field))) for s in samples[:5000]])
        print(f"CLIP tokens, {field} (first 5000): mean {counts.mean():.1f}, p99 {np.percentile(counts, 99):.0f}, "
              f"max {counts.max()} (limit 75)")


if __name__ == "__main__":
    main()
