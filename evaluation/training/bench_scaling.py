"""Training throughput through the real train-gan path: 1 vs 2 workers, DeepSpeed vs plain.

Each configuration is a full ``run_train_gan`` (Ray Train, Ray Data, engines,
checkpoints, MLflow) on the same dataset of canonical-head renders, same GAN,
same global batch. Throughput is taken from the ticks after the first (the
first tick holds start-up: DeepSpeed init, Ray Data's first blocks), as
images/s = 1000 / sec_per_kimg. Checkpointing every tick is included, as in a
real run at this tick length.

    OMP_NUM_THREADS=1 python evaluation/training/bench_scaling.py --kimg 0.096 --tick 0.024
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CONFIGS = [
    ("1 worker, plain", {"scaling.num_workers": 1, "scaling.strategy": "plain"}),
    ("2 workers, plain", {"scaling.num_workers": 2, "scaling.strategy": "plain"}),
    ("1 worker, deepspeed zero0", {"scaling.num_workers": 1, "scaling.strategy": "deepspeed", "scaling.zero_stage": 0}),
    ("2 workers, deepspeed zero0", {"scaling.num_workers": 2, "scaling.strategy": "deepspeed", "scaling.zero_stage": 0}),
    ("2 workers, deepspeed zero2", {"scaling.num_workers": 2, "scaling.strategy": "deepspeed", "scaling.zero_stage": 2}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kimg", type=float, default=0.096, help="training length per configuration")
    parser.add_argument("--tick", type=float, default=0.024, help="kimg per tick (one timing sample each)")
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--preset", default="micro", choices=["micro", "tiny"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling.json"))
    args = parser.parse_args()

    import mlflow
    import ray

    from avatar3d.config import load_config
    from avatar3d.runtime import apply_local_defaults
    from avatar3d.training.config import TrainGANConfig
    from avatar3d.training.job import run_train_gan
    from tests.training.fixtures import MICRO_GAN, write_head_dataset

    apply_local_defaults()
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    size = 32 if args.preset == "micro" else 64
    dataset = write_head_dataset(work / "data", n=256, size=size)
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    rows = []
    for name, over in CONFIGS:
        overrides = [f"data.path={dataset}", f"output_dir={work / 'runs'}", f"run_name={name.replace(' ', '_').replace(',', '')}",
                     f"batch_size={args.batch}", f"total_kimg={args.kimg}", f"kimg_per_tick={args.tick}",
                     "tracking.register_name=", "image_ticks=1000", "snapshot_ticks=1"]
        overrides += [f"{k}={v}" for k, v in over.items()]
        cfg = load_config(TrainGANConfig, None, overrides)
        if args.preset == "micro":
            cfg.model.overrides = dict(MICRO_GAN)
        t0 = time.time()
        result = run_train_gan(cfg)
        wall = time.time() - t0
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'runs'}/mlflow.db")
        sec = [m.value for m in client.get_metric_history(result.mlflow_run_id, "sec_per_kimg")][1:]
        ips = [1000.0 / s for s in sec]
        rows.append({"config": name, "images_per_s": sum(ips) / len(ips), "ticks_timed": len(ips),
                     "wall_s_whole_run": wall, **over})
        print(f"{name:28s} {rows[-1]['images_per_s']:.2f} images/s (wall {wall:.0f} s)", flush=True)
    ray.shutdown()
    load = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "loadavg": load, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"load average {load}; results in {out}")


if __name__ == "__main__":
    main()
