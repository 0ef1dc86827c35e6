"""The training loop in one process (plain engines): snapshots, resume, failure modes."""
import itertools
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from avatar3d.gan.config import GANConfig
from avatar3d.gan.snapshot import load_snapshot, read_snapshot_metadata
from avatar3d.datagen.dataset import read_table
from avatar3d.training.data import decode_batch
from avatar3d.training.loop import (SNAPSHOT_FILE, STATE_TREE, LoopHooks, LoopOptions, NonFiniteLossError,
                                    build_trainer, load_resume_state, read_resume_state, resume_changes,
                                    training_loop)

from tests.training.fixtures import MICRO_GAN

CFG = GANConfig.tiny(**{**MICRO_GAN, "sr_channels": (16, 16)})


def _batches(rows, start=0, per=4):
    """Deterministic batch stream (what the Ray shard gives with preserve_order), resumable at any step."""
    n = len(rows["camera"]) // per
    for k in itertools.count(start):
        i = (k % n) * per
        yield decode_batch({c: rows[c][i:i + per] for c in ("image_png", "camera")}, 32, True,
                           np.random.default_rng([7, k]))


def _run(rows, total_kimg, keep, resume=None, keep_dir=None):
    """-> (trainer, result); ``keep`` gets (kimg, copy of the checkpoint under ``keep_dir``) per checkpoint
    (the loop removes its own folder when report returns)."""
    trainer = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
    start = 0
    if resume is not None:
        from avatar3d.training.loop import peek_batch_idx
        start = peek_batch_idx(resume)

    def report(metrics, ckpt):
        if ckpt is not None and keep_dir is not None:
            copy = Path(keep_dir) / f"kimg{metrics['kimg']:.3f}-{len(keep)}"
            shutil.copytree(ckpt, copy)
            keep.append((metrics["kimg"], copy))
        elif ckpt is not None:
            keep.append((metrics["kimg"], None))

    opts = LoopOptions(total_kimg=total_kimg, kimg_per_tick=0.008, snapshot_ticks=1, image_ticks=100)
    result = training_loop(trainer, _batches(rows, start), opts, LoopHooks(report=report, print=lambda *_: None),
                           resume_from=resume)
    return trainer, result


@pytest.fixture(scope="module")
def rows(head_dataset):
    return read_table(head_dataset).to_pydict()


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(rows, tmp_path):
    torch.manual_seed(0)
    full_ckpts, half_ckpts = [], []
    full, res_full = _run(rows, 0.016, full_ckpts)
    assert res_full.cur_nimg == 16 and len(full_ckpts) == 2
    _, res_half = _run(rows, 0.008, half_ckpts, keep_dir=tmp_path)
    assert res_half.cur_nimg == 8
    resumed, res = _run(rows, 0.016, [], resume=half_ckpts[-1][1])
    assert res.cur_nimg == 16
    for (name, a), b in zip(full.G_ema.state_dict().items(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(full.D.parameters(), resumed.D.parameters()):
        assert torch.equal(a, b)
    # Adam moments were restored too (not re-initialised).
    sa, sb = full.opt_G.state_dict()["state"], resumed.opt_G.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_evaluation_hook_runs_on_its_ticks_and_reports_metrics(rows):
    trainer = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
    seen, reported = [], []
    hooks = LoopHooks(report=lambda m, c: reported.append(dict(m)), print=lambda *_: None,
                      evaluators=[(2, lambda tr: seen.append(tr.cur_nimg) or {"fid": float(tr.cur_nimg)}),
                                  (3, lambda tr: {"truth_x": 1.0}), (0, lambda tr: {"never": 1.0})])
    opts = LoopOptions(total_kimg=0.02, kimg_per_tick=0.004, snapshot_ticks=100, image_ticks=100)
    training_loop(trainer, _batches(rows), opts, hooks)
    assert seen == [8, 16, 20]  # every 2nd tick, and the last
    assert [m.get("fid") for m in reported] == [None, 8.0, None, 16.0, 20.0]
    assert [m.get("truth_x") for m in reported] == [None, None, 1.0, None, 1.0]  # every 3rd tick, and the last
    assert not any("never" in m for m in reported)


def test_snapshot_loads_and_renders_in_a_plain_process(rows, tmp_path):
    ckpts = []
    trainer, _ = _run(rows, 0.008, ckpts, keep_dir=tmp_path)
    snap = load_snapshot(ckpts[-1][1] / SNAPSHOT_FILE)
    assert snap.info["kimg"] == pytest.approx(0.008)
    for a, b in zip(snap.generator.state_dict().values(), trainer.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    from avatar3d.scene.cameras import camera_label
    c = torch.tensor(camera_label([0.0, 180.0], [0.0, 0.0]), dtype=torch.float32)
    out = snap.generator(torch.randn(2, CFG.z_dim), c, noise_mode="const")
    assert out.image.shape == (2, 3, 32, 32) and torch.isfinite(out.image).all()


def test_snapshot_metadata_is_checked(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an avatar3d generator snapshot"):
        read_snapshot_metadata(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="snapshot not found"):
        read_snapshot_metadata(tmp_path / "missing.safetensors")


def test_nan_loss_stops_before_checkpointing_and_keeps_the_last_good_one(rows, tmp_path):
    ckpts = []
    trainer, _ = _run(rows, 0.008, ckpts, keep_dir=tmp_path)
    good = ckpts[-1][1]
    before = sorted(p.name for p in good.rglob("*"))
    # Poison D so its logits are NaN, then continue from the good checkpoint.
    trainer2 = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
    load_resume_state(trainer2, good, 0)
    with torch.no_grad():
        next(trainer2.D.parameters()).fill_(float("nan"))
    opts = LoopOptions(total_kimg=0.016, kimg_per_tick=0.004)
    written = []
    with pytest.raises(NonFiniteLossError, match="became nan at kimg 0.012; the last good checkpoint is kept"):
        training_loop(trainer2, _batches(rows, 2), opts, LoopHooks(report=lambda m, c: written.append(c),
                                                                    print=lambda *_: None))
    assert written == []
    assert sorted(p.name for p in good.rglob("*")) == before
    trainer3 = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
    load_resume_state(trainer3, good, 0)  # still loads
    assert trainer3.cur_nimg == 8


def test_resume_takes_new_loss_weights_and_refuses_the_rest(rows, tmp_path):
    ckpts = []
    _run(rows, 0.008, ckpts, keep_dir=tmp_path / "kept")
    state = ckpts[-1][1]
    saved = json.loads(read_resume_state(state)["gan_config"])
    assert resume_changes(saved, CFG) == {}
    # A loss weight and a schedule may change: the state loads as it was, and the loss reads the new values.
    new_cfg = CFG.replace(r1_gamma=3.0, blur_fade_kimg=0.5)
    assert resume_changes(saved, new_cfg) == {"blur_fade_kimg": (CFG.blur_fade_kimg, 0.5), "r1_gamma": (1.0, 3.0)}
    same, new = (build_trainer(c, None, 0, 0, 1, "cpu") for c in (CFG, new_cfg))
    load_resume_state(same, state, 0)
    load_resume_state(new, state, 0)
    assert new.cur_nimg == same.cur_nimg == 8 and new.batch_idx == same.batch_idx
    for net in ("G", "D", "G_ema"):
        for (name, a), b in zip(getattr(new, net).state_dict().items(), getattr(same, net).state_dict().values()):
            assert torch.equal(a, b), f"{net}.{name}"
    assert new.loss.cfg.r1_gamma == 3.0 and same.loss.cfg.r1_gamma == 1.0
    # ... and trains on under the new weight: the R1 phase's penalty scales with gamma (same state, same batch;
    # a trainer with gamma alone changed, as the blur schedule changes the images D sees)
    gamma_only = build_trainer(CFG.replace(r1_gamma=3.0), None, 0, 0, 1, "cpu")
    load_resume_state(gamma_only, state, 0)
    batch = next(_batches(rows, 0))
    penalties = []
    for trainer in (same, gamma_only):
        torch.manual_seed(0)
        _, stats = trainer.loss.phase_loss("Dreg", batch.images, batch.cameras, torch.randn(4, CFG.z_dim),
                                           batch.cameras, 1.0, trainer.cur_nimg)
        penalties.append(stats["loss_D_r1"])
    assert penalties[1] == pytest.approx(3.0 * penalties[0], rel=1e-4)
    # A new learning rate replaces the one the loaded optimiser states carry (lazy-regularisation corrected),
    # and the moments stay the saved ones.
    slow_cfg = CFG.replace(lr_g=CFG.lr_g / 4, lr_d=CFG.lr_d / 2)
    assert set(resume_changes(saved, slow_cfg)) == {"lr_g", "lr_d"}
    slow = build_trainer(slow_cfg, None, 0, 0, 1, "cpu")
    load_resume_state(slow, state, 0)
    g_int, d_int = CFG.density_reg_interval, CFG.r1_interval
    assert [g["lr"] for g in slow.G_engine.optimizer.param_groups] == [pytest.approx(CFG.lr_g / 4 * g_int / (g_int + 1))]
    assert [g["lr"] for g in slow.D_engine.optimizer.param_groups] == [pytest.approx(CFG.lr_d / 2 * d_int / (d_int + 1))]
    for engine, base in ((slow.G_engine, same.G_engine), (slow.D_engine, same.D_engine)):
        assert len(engine.optimizer.state) > 0
        for a, b in zip(engine.optimizer.state.values(), base.optimizer.state.values()):
            assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    frozen = build_trainer(CFG.replace(lr_d=0.0), None, 0, 0, 1, "cpu")
    load_resume_state(frozen, state, 0)
    d_before = [p.detach().clone() for p in frozen.D.parameters()]
    batch = next(_batches(rows, 0))
    frozen.step(batch.images, batch.cameras)
    assert all(torch.equal(a, b) for a, b in zip(d_before, frozen.D.parameters())), "lr_d=0 must freeze D"
    # Anything that shapes the state, or the optimisers' settings, is refused in one line naming it.
    other = build_trainer(GANConfig.tiny(**{**MICRO_GAN, "sr_channels": (8, 8), "r1_gamma": 3.0}), None, 0, 0, 1, "cpu")
    with pytest.raises(ValueError, match=r"different model config \(sr_channels\); .*only loss weights"):
        load_resume_state(other, state, 0)
    with pytest.raises(ValueError, match=r"different model config \(betas\)"):
        resume_changes(saved, CFG.replace(betas=(0.0, 0.9)))
    for off in ({"r1_gamma": 0.0}, {"density_reg": 0.0}):
        with pytest.raises(ValueError, match=rf"{next(iter(off))} \S+ -> 0.0 switches a regulariser on or off"):
            resume_changes(saved, CFG.replace(**off))
    off_state = {**saved, "density_reg": 0.0}  # a state trained without it cannot have it switched on either
    with pytest.raises(ValueError, match=r"density_reg 0.0 -> 0.25 switches a regulariser on or off"):
        resume_changes(off_state, CFG)
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        load_resume_state(other, tmp_path, 0)


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    """tempfile's folder (where the loop makes its checkpoint folders) pointed at an empty one; restored after."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_checkpoint_folders_exist_while_report_runs_and_are_removed_after(rows, private_tempdir):
    seen = []

    def report(metrics, ckpt):
        if ckpt is not None:
            assert ckpt.parent == private_tempdir and ckpt.name.startswith("avatar3d-ckpt-")
            assert (ckpt / SNAPSHOT_FILE).is_file() and (ckpt / STATE_TREE).is_dir() and (ckpt / "rng_rank0").is_dir()
            seen.append((metrics["kimg"], ckpt))

    trainer = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
    opts = LoopOptions(total_kimg=0.012, kimg_per_tick=0.004, snapshot_ticks=2, image_ticks=100)
    training_loop(trainer, _batches(rows), opts, LoopHooks(report=report, print=lambda *_: None))
    assert [kimg for kimg, _ in seen] == [0.008, 0.012]  # every 2nd tick, and the last
    assert list(private_tempdir.iterdir()) == []
    # The default hooks (tests, benchmarks) take no copy either: nothing piles up.
    trainer = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
    training_loop(trainer, _batches(rows), LoopOptions(total_kimg=0.004, kimg_per_tick=0.004, image_ticks=100),
                  LoopHooks(print=lambda *_: None))
    assert list(private_tempdir.iterdir()) == []


def test_a_failing_report_or_snapshot_log_leaves_no_checkpoint_folder(rows, private_tempdir):
    def fail(*args):
        raise RuntimeError("storage unreachable")

    for hooks in (LoopHooks(report=fail, print=lambda *_: None), LoopHooks(log_snapshot=fail, print=lambda *_: None)):
        trainer = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
        opts = LoopOptions(total_kimg=0.004, kimg_per_tick=0.004, image_ticks=100)
        with pytest.raises(RuntimeError, match="storage unreachable"):
            training_loop(trainer, _batches(rows), opts, hooks)
        assert list(private_tempdir.iterdir()) == []


PROGRESS = re.compile(r"^tick (?P<tick>\d+) +kimg (?P<kimg>[\d.]+) +sec/kimg (?P<spk>[\d.]+) +.*"
                      r" mem (?P<mem>[\d.]+)GB elapsed \d+h\d\dm\d\ds eta (?P<h>\d+)h(?P<m>\d\d)m(?P<s>\d\d)s$")


def test_each_tick_prints_kimg_sec_per_kimg_peak_memory_and_eta(rows):
    """README: "Progress is printed per tick in kimg with sec/kimg, ETA and peak memory" (the print hook is
    the rank-0 worker's log.info)."""
    import resource

    trainer = build_trainer(CFG, None, seed=0, rank=0, world_size=1, device="cpu")
    lines = []
    opts = LoopOptions(total_kimg=0.012, kimg_per_tick=0.004, snapshot_ticks=100, image_ticks=100)
    training_loop(trainer, _batches(rows), opts, LoopHooks(print=lines.append))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ticks = [PROGRESS.match(line) for line in lines]
    assert all(ticks) and len(ticks) == 3, lines
    assert [int(t["tick"]) for t in ticks] == [1, 2, 3]
    assert [float(t["kimg"]) for t in ticks] == [0.004, 0.008, 0.012]
    for t in ticks:
        spk, remaining = float(t["spk"]), 0.012 - float(t["kimg"])
        eta = int(t["h"]) * 3600 + int(t["m"]) * 60 + int(t["s"])
        assert spk > 0 and abs(eta - remaining * spk) <= 1.01  # whole seconds, sec/kimg to 0.1
        assert 0 < float(t["mem"]) <= peak_gb + 0.01  # this process's peak resident memory, in GB
    assert ticks[-1]["h"] + ticks[-1]["m"] + ticks[-1]["s"] == "00000"  # nothing left after the last tick
