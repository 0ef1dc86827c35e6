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
from avatar3d.gan.generator import TriPlaneGenerator
from avatar3d.gan.snapshot import load_snapshot, save_snapshot
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.job import run_train_gan
from avatar3d.training.loop import read_resume_state
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


# The resumed runs below all continue this configuration: 2 workers, DeepSpeed ZeRO-1, 3 ticks of 2 steps.
RESUMABLE = {"scaling.num_workers": 2, "scaling.strategy": "deepspeed", "scaling.zero_stage": 1,
             "tracking.register": False, "total_kimg": 0.024}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, head_dataset):
    """The uninterrupted run every resumed one must equal (README: to 1e-6 through Ray + DeepSpeed)."""
    result = run_train_gan(_cfg(tmp_path_factory.mktemp("straight"), head_dataset, run_name="straight", **RESUMABLE))
    assert _kimg_history(result) == pytest.approx([0.008, 0.016, 0.024])
    return result


def _assert_same_generator(snapshot, reference):
    a, b = load_snapshot(snapshot).generator.state_dict(), load_snapshot(reference).generator.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def _checkpoint_at(result, kimg):
    """The run's checkpoint folder in Ray's storage whose resume state stopped at ``kimg``."""
    folders = [f for f in (result.run_dir.parent / "ray" / result.run_dir.name).glob("checkpoint_*")
               if f.is_dir() and read_resume_state(f)["cur_nimg"] == round(kimg * 1000)]
    assert len(folders) == 1, folders
    return folders[0]


def test_resume_by_run_name_equals_uninterrupted_run(tmp_path, head_dataset, straight):
    half = run_train_gan(_cfg(tmp_path, head_dataset, run_name="split", **{**RESUMABLE, "total_kimg": 0.008}))
    assert half.kimg == pytest.approx(0.008)
    resumed = run_train_gan(_cfg(tmp_path, head_dataset, run_name="split", **RESUMABLE))
    assert resumed.kimg == pytest.approx(0.024)
    assert _kimg_history(resumed) == pytest.approx([0.008, 0.016, 0.024])  # continued, not restarted
    _assert_same_generator(resumed.snapshot, straight.snapshot)


# Slow (78 s): fault injection on a 2-worker Ray Train group, a simulated-cluster test like the node-loss ones
# in tests/cluster/; resume from a checkpoint stays in the default suite (test_resume_*).
@pytest.mark.slow
def test_killed_worker_recovers_from_last_checkpoint(tmp_path, head_dataset, straight):
    cfg = _cfg(tmp_path, head_dataset, run_name="crash", max_failures=1, **RESUMABLE)
    marker = tmp_path / "crash" / ".crash-injected"
    registry = tmp_path / "ray" / "crash" / "checkpoint_manager_snapshot.json"  # Ray's registered checkpoints

    def crash_rank1_once_after_tick1(tick, rank):  # the test hook, shipped to the workers by Ray (by value)
        import json
        import os
        import signal
        import time

        if tick == 1 and rank == 1 and not os.path.exists(marker):
            # A checkpoint counts once Ray's controller has collected every rank's report of it (it polls every
            # ~2 s); a worker killed before that takes its report with it. Die once tick 1's is registered.
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    ticks = [r["metrics"]["tick"] for r in json.loads(registry.read_text())["checkpoint_results"]]
                except (OSError, ValueError, KeyError):
                    ticks = []
                if 1 in ticks:
                    break
                time.sleep(0.2)
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    result = run_train_gan(cfg, after_tick=crash_rank1_once_after_tick1)
    assert marker.is_file()  # the worker really was killed
    assert result.kimg == pytest.approx(0.024)
    # Tick 1 was logged before the kill; the restarted group went on from its checkpoint (a restart from
    # scratch logs 0.008 twice), and ended where the uninterrupted run did.
    assert _kimg_history(result) == pytest.approx([0.008, 0.016, 0.024])
    _assert_same_generator(result.snapshot, straight.snapshot)


def test_resume_dir_continues_a_checkpoint_in_a_new_run(tmp_path, head_dataset, straight):
    checkpoint = _checkpoint_at(straight, 0.016)
    result = run_train_gan(_cfg(tmp_path, head_dataset, run_name="continued", resume=str(checkpoint), **RESUMABLE))
    assert _kimg_history(result) == pytest.approx([0.024])  # one tick, from kimg 0.016 on
    _assert_same_generator(result.snapshot, straight.snapshot)
    assert (checkpoint / "loop_state").is_dir()  # the folder resumed from is left as it was


def test_resume_dir_with_another_worker_count_is_refused_before_workers_start(tmp_path, head_dataset, straight):
    """ZeRO-1/2 optimiser shards are partitioned per worker and DeepSpeed cannot re-partition them: a
    2-worker checkpoint resumed by 1 worker is refused on the driver, in one line, before Ray starts a group
    (before, the worker failed inside Ray with DeepSpeed's "used a DP world size of 2")."""
    from avatar3d.config import ConfigError
    checkpoint = _checkpoint_at(straight, 0.016)
    cfg = _cfg(tmp_path, head_dataset, run_name="fewer", resume=str(checkpoint),
               **{**RESUMABLE, "scaling.num_workers": 1})
    with pytest.raises(ConfigError, match=r"^resume: .* holds ZeRO optimiser shards of 2 workers.*"
                                          r"scaling.num_workers=1; resume with scaling.num_workers=2, or start a "
                                          r"new run with transfer=.*snapshot.safetensors$"):
        run_train_gan(cfg)
    assert not (tmp_path / "fewer").exists() and not (tmp_path / "ray").exists()  # nothing started
    # So is a model option that the state cannot take (before, a traceback from inside the worker group).
    cfg = _cfg(tmp_path, head_dataset, run_name="wider", resume=str(checkpoint), **RESUMABLE)
    cfg.model.overrides = {**MICRO_GAN, "decoder_hidden": 2 * cfg.model.build().decoder_hidden}
    with pytest.raises(ConfigError, match=r"^resume: the checkpoint was trained with a different model config "
                                          r"\(decoder_hidden\); resume with the same model options"):
        run_train_gan(cfg)
    assert not (tmp_path / "wider").exists() and not (tmp_path / "ray").exists()
    # A loss weight passes the driver's check: the next check (batch vs rows) is the one that stops this run.
    cfg = _cfg(tmp_path, head_dataset, run_name="gamma", resume=str(checkpoint), **{**RESUMABLE, "batch_size": 20})
    cfg.model.overrides = {**MICRO_GAN, "r1_gamma": 3.0}
    with pytest.raises(ConfigError, match=r"^batch_size: each of 2 worker"):
        run_train_gan(cfg)


def test_transfer_starts_from_the_snapshot_generator(tmp_path, head_dataset):
    """With lr_g=0 nothing moves G: the run's snapshot holds exactly the transferred weights. The snapshot was
    trained at another rate (a transfer may change loss options and rates, not the generator's shape)."""
    cfg = _cfg(tmp_path, head_dataset, run_name="transfer", total_kimg=0.008,
               transfer=str(tmp_path / "source.safetensors"), **{"scaling.num_workers": 1, "scaling.strategy": "plain", "tracking.register": False})
    cfg.model.overrides = {**MICRO_GAN, "lr_g": 0.0}
    gan_cfg = cfg.model.build()
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 1)  # not the weights the run itself would initialise
        source = TriPlaneGenerator(gan_cfg)
    save_snapshot(cfg.transfer, source, gan_cfg.replace(lr_g=0.0025, r1_gamma=3.0).to_dict())
    result = run_train_gan(cfg)
    assert _kimg_history(result) == pytest.approx([0.008])
    trained = load_snapshot(result.snapshot).generator
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        fresh = TriPlaneGenerator(gan_cfg)
    for (name, a), b, c in zip(trained.named_parameters(), source.parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
        assert not torch.equal(b, c) or (b == b.flatten()[0]).all(), name  # constants aside, the run's own init differs


def test_bad_options_fail_before_any_worker_starts(tmp_path, head_dataset):
    from avatar3d.config import ConfigError
    with pytest.raises(ConfigError, match="each of 2 worker"):
        run_train_gan(_cfg(tmp_path, head_dataset, batch_size=20, **{"scaling.num_workers": 2}))
    with pytest.raises(ConfigError, match="not a train-gan checkpoint"):
        run_train_gan(_cfg(tmp_path, head_dataset, resume=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="snapshot not found"):
        run_train_gan(_cfg(tmp_path, head_dataset, transfer=str(tmp_path / "x.safetensors")))
    # a snapshot of another generator shape: one line naming the option, before any worker starts
    other = _cfg(tmp_path, head_dataset, transfer=str(tmp_path / "other.safetensors"))
    other_gan = other.model.build().replace(decoder_hidden=8)
    save_snapshot(other.transfer, TriPlaneGenerator(other_gan), other_gan.to_dict())
    with pytest.raises(ConfigError, match=r"^transfer: the snapshot was trained with a different model config "
                                          r"\(decoder_hidden\); transfer with the same model options"):
        run_train_gan(other)
