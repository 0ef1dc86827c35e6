"""Discriminator ablation (docs/method.md section 4): fine-only vs coarse-only vs coarse-to-fine pose labels.

Three ``avatar3d train-gan`` runs (Ray Train, the same code path as the CLI)
that differ only in ``model.overrides.d_mode``: same data, seed, batch and
kimg budget. Each final snapshot is scored with :func:`evaluate_fid`
(overall + front / side / back, Inception features). Results go to

- a Markdown table (printed, and ``<out>/ablation_discriminator.md``),
- ``<out>/ablation_discriminator.json`` (numbers + FID protocols),
- MLflow: the three training runs in one experiment, tagged
  ``ablation=discriminator`` and ``d_mode=<mode>``, with the FIDs logged into
  each run; select them in ``mlflow ui`` and press Compare.

Without ``--data`` it writes a dataset of canonical-head renders (the test
fixture's: normal maps tinted per image, cameras uniform over 360 deg yaw).

    OMP_NUM_THREADS=1 python evaluation/ablation_discriminator.py --out outputs/ablation \\
        --preset tiny --kimg 0.2 --images 96 --size 64 --num-fakes 96
    mlflow ui --backend-store-uri sqlite:///outputs/ablation/mlflow.db
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the head-dataset writer lives with the training tests

MODES = ("fine", "coarse", "coarse_to_fine")
EXPERIMENT = "avatar3d-ablation-discriminator"


def train_config(mode: str, args, data: Path):
    from avatar3d.config import load_config
    from avatar3d.training.config import TrainGANConfig

    cfg = load_config(TrainGANConfig, None, [
        f"run_name=ablation-{mode}", f"output_dir={args.out}", f"data.path={data}", "model.preset=tiny",
        f"batch_size={args.batch}", f"total_kimg={args.kimg}", f"kimg_per_tick={args.kimg / 2}",
        f"seed={args.seed}", "scaling.num_workers=1", "scaling.strategy=plain",
        f"tracking.experiment={EXPERIMENT}", "tracking.register_name=", "image_ticks=1000",
    ])
    overrides = {"d_mode": mode}
    if args.preset == "micro":  # the test suite's CPU-sized GAN (32 px); the trainer resizes the data
        from tests.training.fixtures import MICRO_GAN

        overrides.update(MICRO_GAN)
    cfg.model.overrides = overrides
    cfg.validate()
    return cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--data", default=None, help="dataset folder (default: write head renders into <out>/data)")
    p.add_argument("--images", type=int, default=96, help="head renders to write when --data is not given")
    p.add_argument("--size", type=int, default=64, help="their size in pixels")
    p.add_argument("--preset", choices=["tiny", "micro"], default="tiny")
    p.add_argument("--kimg", type=float, default=0.2, help="training budget per mode, thousands of images")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-fakes", type=int, default=96)
    p.add_argument("--extractor", default="inception", help="FID features (see avatar3d fid --help)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--real-floor", action="store_true",
                   help="instead of training: FID of a second, independent set of head renders (seed + 1) "
                        "against the data, the value a perfect generator would get at this sample size")
    args = p.parse_args()
    args.out = str(Path(args.out).resolve())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import mlflow
    import torch

    from avatar3d.evaluation.features import get_extractor
    from avatar3d.evaluation.fid import evaluate_fid
    from avatar3d.runtime import set_torch_threads
    from avatar3d.gan.snapshot import load_snapshot
    from avatar3d.training.job import run_train_gan

    set_torch_threads()
    data = Path(args.data) if args.data else out / "data"
    if not args.data and not (data / "shards").is_dir():
        from tests.training.fixtures import write_head_dataset

        write_head_dataset(data, n=args.images, size=args.size, seed=args.seed, rows_per_file=32)
    extractor = get_extractor(args.extractor)
    if args.real_floor:
        print(f"real floor: FID {real_floor(args, data, extractor, out):.2f}")
        return 0
    rows = []
    for mode in args.modes.split(","):
        t0 = time.time()
        trained = run_train_gan(train_config(mode, args, data))
        train_s = time.time() - t0
        G = load_snapshot(trained.snapshot).generator
        t1 = time.time()
        fid = evaluate_fid(G, data, num_fakes=args.num_fakes, seed=args.seed, extractor=extractor,
                           cache_dir=out / "cache", method="eigh")
        fid_s = time.time() - t1
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
        for key, value in fid.metrics().items():
            if value == value:  # NaN (too few images in a view group) is not logged
                client.log_metric(trained.mlflow_run_id, key, value)
        client.set_tag(trained.mlflow_run_id, "ablation", "discriminator")
        client.set_tag(trained.mlflow_run_id, "d_mode", mode)
        client.log_dict(trained.mlflow_run_id, fid.to_dict(), "fid.json")
        rows.append({"d_mode": mode, "fid": fid.overall, **{f"fid_{g}": v for g, v in fid.per_view.items()},
                     "kimg": trained.kimg, "train_s": round(train_s, 1), "fid_s": round(fid_s, 1),
                     "mlflow_run_id": trained.mlflow_run_id, "protocol": fid.protocol})
        print(f"{mode}: FID {fid.overall:.2f} ({train_s:.0f} s training, {fid_s:.0f} s FID)", flush=True)
        del G
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    table = markdown_table(rows)
    print(table)
    (out / "ablation_discriminator.md").write_text(table + "\n")
    (out / "ablation_discriminator.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2,
                                                                default=str))
    return 0


def real_floor(args, data: Path, extractor, out: Path) -> float:
    """FID between the data and an independent sample of the same distribution (same size, next seed)."""
    import numpy as np

    from avatar3d.evaluation.fid import FeatureStats, camera_groups, fid_between, iter_dataset, reference_stats
    from avatar3d.datagen.dataset import open_dataset
    from tests.training.fixtures import write_head_dataset

    info = open_dataset(data)
    other = out / "data_floor"
    if not (other / "shards").is_dir():
        write_head_dataset(other, n=info.num_rows, size=info.image_size[0], seed=args.seed + 1, rows_per_file=32)
    resolution = train_config("fine", args, data).model.build().output_resolution  # what G renders
    real, _, _ = reference_stats(data, extractor, resolution, out / "cache")
    batches = list(iter_dataset(other, resolution))
    feats = extractor(np.concatenate([b[0] for b in batches]))
    second = FeatureStats.from_features(feats, camera_groups(np.concatenate([b[1] for b in batches])))
    return fid_between(second, real, "all", "eigh")


def markdown_table(rows) -> str:
    def f(v):
        return "n/a" if v != v else f"{v:.1f}"

    lines = ["| D pose label | FID | front | side | back | kimg | train s | n fakes (front/side/back) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        per = r["protocol"]["num_fakes_per_view"]
        lines.append(f"| {r['d_mode']} | {f(r['fid'])} | {f(r['fid_front'])} | {f(r['fid_side'])} | "
                     f"{f(r['fid_back'])} | {r['kimg']:.3f} | {r['train_s']} | "
                     f"{per['front']}/{per['side']}/{per['back']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
