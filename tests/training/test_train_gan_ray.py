"""train-gan end to end on local Ray: 2 CPU workers, DeepSpeed, MLflow, registry, resume, recovery.

Each run uses the micro GAN (same networks, tiny sizes) for a handful of steps.
"""
import json
import subprocess
import sys
import textwrap

import mlflow
import pytest
import ray
import torch

from avatar3d.config import load_config
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.job import run_train_gan
from tests.training.fixtures import MICRO_GAN


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(tmp, head_dataset, **over):
    overrides = [f"data.path={head_dataset}", f"output_dir={tmp}", "batch_size=4", "kimg_per_tick=0.008",
                 "total_kimg=0.016", "tracking.register_name=tiny-gan", "max_failures=0"]
    overrides += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in over.items()]
    cfg = load_config(TrainGANConfig, None, overrides)
    cfg.model.overrides = dict(MICRO_GAN)
    return cfg


def _kimg_history(result):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{result.run_dir.parent}/mlflow.db")
    return [m.value for m in client.get_metric_history(result.mlflow_run_id, "kimg")]


def test_two_workers_deepspeed_tracks_registers_and_serves(tmp_path, head_dataset):
    cfg = _cfg(tmp_path, head_dataset, **{"scaling.num_workers": 2, "scaling.strategy": "deepspeed",
                                          "scaling.zero_stage": 2, "run_name": "ds2", "fid_ticks": 2,
                                          "fid.num_fakes": 24})
    result = run_train_gan(cfg)
    assert result.kimg == pytest.approx(0.016)
    assert result.snapshot.is_file() and (result.run_dir / "config.yaml").is_file()
    # MLflow: config, per-tick metrics, sample grids per view group, checkpoints.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["train.scaling.zero_stage"] == "2"
    assert _kimg_history(result) == pytest.approx([0.008, 0.016])
    assert {"loss_G", "loss_D_real", "loss_D_r1", "sec_per_kimg"} <= set(run.data.metrics)
    # Training-time FID through the evaluation code (real Inception), at the last tick only.
    fid = client.get_metric_history(result.mlflow_run_id, "fid")
    assert len(fid) == 1 and fid[0].step == 16 and 0 < fid[0].value < 1e4
    assert {"fid_front", "fid_side", "fid_back"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "samples")}
    assert artifacts == {"samples/front", "samples/side", "samples/back"}
    assert client.list_artifacts(result.mlflow_run_id, "checkpoints")
    assert result.registered_version == "tiny-gan/1"
    # The snapshot renders in a plain process, and the registered model serves from a fresh one.
    code = textwrap.dedent(f"""
        import mlflow, numpy as np, pandas as pd, torch
        from avatar3d.gan.snapshot import load_snapshot
        snap = load_snapshot({str(result.snapshot)!r})
        mlflow.set_tracking_uri("sqlite:///{tmp_path}/mlflow.db")
        model = mlflow.pyfunc.load_model("models:/tiny-gan/1")
        imgs = model.predict(pd.DataFrame({{"seed": [0, 0, 1], "yaw": [0.0, 0.0, 180.0]}}))
        assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8, imgs.shape
        assert (imgs[0] == imgs[1]).all() and not (imgs[0] == imgs[2]).all()
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-2000:]
    snap = load_snapshot(result.snapshot)
    assert snap.info["kimg"] == pytest.approx(0.016)


def test_resume_by_run_name_equals_uninterrupted_run(tmp_path, head_dataset):
    common = {"scaling.num_workers": 1, "scaling.strategy": "deepspeed", "scaling.zero_stage": 1,
              "tracking.register": False}
    straight = run_train_gan(_cfg(tmp_path / "a", head_dataset, run_name="straight", **common))
    half = run_train_gan(_cfg(tmp_path / "b", head_dataset, run_name="split", total_kimg=0.008, **common))
    assert half.kimg == pytest.approx(0.008)
    resumed = run_train_gan(_cfg(tmp_path / "b", head_dataset, run_name="split", **common))
    assert resumed.kimg == pytest.approx(0.016)
    assert _kimg_history(resumed) == pytest.approx([0.008, 0.016])  # continued, not restarted
    a = load_snapshot(straight.snapshot).generator.state_dict()
    b = load_snapshot(resumed.snapshot).generator.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_killed_worker_recovers_from_last_checkpoint(tmp_path, head_dataset):
    cfg = _cfg(tmp_path, head_dataset, run_name="crash", total_kimg=0.024, max_failures=1,
               **{"scaling.num_workers": 2, "scaling.strategy": "plain", "tracking.register": False})
    marker = tmp_path / "crash" / ".crash-injected"

    def crash_rank1_once_after_tick1(tick, rank):  # the test hook, shipped to the workers by Ray (by value)
        import os
        import signal

        if tick == 1 and rank == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    result = run_train_gan(cfg, after_tick=crash_rank1_once_after_tick1)
    assert marker.is_file()  # the worker really was killed
    assert result.kimg == pytest.approx(0.024)
    history = _kimg_history(result)
    assert history[0] == pytest.approx(0.008) and history[-1] == pytest.approx(0.024)
    assert 0.0 not in history


def test_bad_options_fail_before_any_worker_starts(tmp_path, head_dataset):
    from avatar3d.config import ConfigError
    with pytest.raises(ConfigError, match="each of 2 worker"):
        run_train_gan(_cfg(tmp_path, head_dataset, batch_size=20, **{"scaling.num_workers": 2}))
    with pytest.raises(ConfigError, match="not a train-gan checkpoint"):
        run_train_gan(_cfg(tmp_path, head_dataset, resume=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="snapshot not found"):
        run_train_gan(_cfg(tmp_path, head_dataset, transfer=str(tmp_path / "x.safetensors")))
