"""Training-time FID is the number `avatar3d fid` gives for the snapshot of the same tick.

The trainer's FID hook (avatar3d.training.ray_worker._fid_hook, what rank 0 runs every ``fid_ticks``) and the
``fid`` command must share one protocol: the same fakes (latents, cameras, ray jitter from the seed), the same
extractor, the same reference statistics. Here the plain training loop runs two ticks in-process with the hook
as its evaluator (the Ray path is tests/training/test_train_gan_ray.py); the command then measures the final
checkpoint's snapshot with nothing but ``--num-fakes`` given. Features are the small test network (the
extractor's name, which is part of the protocol, is still checked): the equality is about the protocol.
"""
import json
import math
import shutil
import tempfile

import numpy as np
import pytest
import torch

from avatar3d.cli import main
from avatar3d.config import load_config
from avatar3d.datagen.dataset import read_table
from avatar3d.gan.config import GANConfig
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.data import decode_batch
from avatar3d.training.loop import SNAPSHOT_FILE, LoopHooks, LoopOptions, build_trainer, training_loop
from tests.evaluation.helpers import SmallFeatures
from tests.training.fixtures import MICRO_GAN

torch.set_num_threads(1)
NUM_FAKES = 12


def _batches(rows, per=4):
    n = len(rows["camera"]) // per
    for k in range(10**6):
        i = (k % n) * per
        yield decode_batch({c: rows[c][i:i + per] for c in ("image_png", "camera")}, 32, True,
                           np.random.default_rng([7, k]))


def _same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_training_time_fid_equals_the_fid_command_on_the_final_snapshot(head_dataset, tmp_path, monkeypatch, capsys):
    import avatar3d.training.ray_worker as worker

    monkeypatch.setenv("AVATAR3D_CACHE_DIR", str(tmp_path / "cache"))  # the hook and the command: default cache
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the loop's checkpoint folders
    asked = []

    def extractor(name, device="cpu"):
        asked.append(name)
        return SmallFeatures()

    monkeypatch.setattr(worker, "get_extractor", extractor)
    monkeypatch.setattr("avatar3d.evaluation.stage.get_extractor", extractor)
    results = []
    evaluate_fid = worker.evaluate_fid
    monkeypatch.setattr(worker, "evaluate_fid", lambda *a, **k: results.append(evaluate_fid(*a, **k)) or results[-1])

    # Training's own FID options (TrainGANConfig's defaults), only the number of fakes lowered.
    cfg = load_config(TrainGANConfig, None, [f"data.path={head_dataset}", f"fid.num_fakes={NUM_FAKES}",
                                              f"output_dir={tmp_path / 'run'}"])
    trainer = build_trainer(GANConfig.tiny(**MICRO_GAN), None, seed=0, rank=0, world_size=1, device="cpu")
    reported = []

    def report(metrics, ckpt):  # the loop removes its checkpoint folder once reported: keep a copy, as Ray does
        kept = shutil.copytree(ckpt, tmp_path / f"kept-{len(reported)}") if ckpt is not None else None
        reported.append((dict(metrics), kept))

    hooks = LoopHooks(report=report, print=lambda *_: None,
                      evaluators=[(1, worker._fid_hook(cfg.data.path, cfg.fid))])
    training_loop(trainer, _batches(read_table(head_dataset).to_pydict()),
                  LoopOptions(total_kimg=0.008, kimg_per_tick=0.004, snapshot_ticks=1, image_ticks=100), hooks)
    assert [m["kimg"] for m, _ in reported] == [0.004, 0.008] and len(results) == 2
    (first, _), (last, checkpoint) = reported
    assert first["fid"] != last["fid"]  # FID follows the weights: matching the last tick is not a coincidence

    out = tmp_path / "fid.json"
    assert main(["fid", "--model", str(checkpoint / SNAPSHOT_FILE), "--data", str(head_dataset),
                 "--num-fakes", str(NUM_FAKES), "--out", str(out)]) == 0, capsys.readouterr().err
    command = json.loads(out.read_text())

    # The number: exactly, overall and per view (a group too small is NaN in the metrics, null in the JSON).
    assert command["overall"] == last["fid"]
    for group, value in command["per_view"].items():
        assert _same(float("nan") if value is None else value, last[f"fid_{group}"]), group
    # The protocol: the same in every field (the command adds the model's name and kimg), the reference
    # statistics the very file the training hook wrote, found in the cache by the command.
    trained = json.loads(json.dumps(results[-1].to_dict()["protocol"]))
    assert {k: v for k, v in command["protocol"].items() if k not in ("model", "model_kimg")} == trained
    assert command["protocol"]["model_kimg"] == pytest.approx(0.008)
    assert not results[0].reference_cached and results[-1].reference_cached and command["reference_cached"]
    assert set(asked) == {cfg.fid.extractor} and len(asked) == 3
