"""The prior's plain training loop: ticks, checkpoints, and a bit-exact resume."""
import shutil
import tempfile

import numpy as np
import pytest
import torch

from avatar3d.gan.optim import OptimizerSpec
from avatar3d.prior.loop import (STATE_TREE, PriorLoopOptions, PriorTrainer, array_batches, load_resume_state,
                                 peek_step, training_loop)
from avatar3d.prior.model import PriorSize, build_prior, train_scheduler
from avatar3d.training.engines import make_engine
from avatar3d.training.loop import LoopHooks

torch.set_num_threads(1)
W_DIM, E_DIM, N = 16, 8, 40


def _data():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(N, E_DIM)).astype(np.float32)
    return e @ rng.normal(size=(E_DIM, W_DIM)).astype(np.float32), e


def _trainer(lr=1e-3):
    torch.manual_seed(0)
    prior = build_prior(W_DIM, E_DIM, PriorSize(num_attention_heads=2, attention_head_dim=8, num_layers=1))
    return PriorTrainer(make_engine(prior, OptimizerSpec(lr=lr, betas=(0.9, 0.999)), "plain"),
                        train_scheduler("sample", 100), seed=0)


def _run(trainer, total, start=0, resume=None, keep=None):
    w, e = _data()
    reports = []

    def report(metrics, ckpt):
        reports.append((metrics["step"], ckpt is not None))
        if ckpt is not None and keep is not None and metrics["step"] == keep[0]:
            shutil.copytree(ckpt, keep[1])  # the loop removes its folder when report returns

    opts = PriorLoopOptions(total_steps=total, steps_per_tick=3, checkpoint_ticks=2, cond_drop_prob=0.2)
    training_loop(trainer, array_batches(w, e, 8, seed=1, start_step=start), opts,
                  LoopHooks(report=report, print=lambda *_: None), resume_from=resume)
    return reports


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = _trainer()
    reports = _run(straight, 14, keep=(6, tmp_path / "ckpt"))
    # A tick every 3 steps (+ the last), a checkpoint every 2nd tick and at the end.
    assert reports == [(3, False), (6, True), (9, False), (12, True), (14, True)]
    assert peek_step(tmp_path / "ckpt") == 6

    resumed = _trainer()
    torch.manual_seed(123)  # a different global RNG state: resume must restore it
    _run(resumed, 14, start=6, resume=tmp_path / "ckpt")
    assert resumed.step_count == 14
    for a, b in zip(straight.prior.state_dict().values(), resumed.prior.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_at_a_lower_lr_keeps_the_moments_and_takes_the_new_rate(tmp_path):
    """The prior's NaN message says "lower lr, then resume": the resumed optimiser runs at the new rate."""
    _run(_trainer(), 6, keep=(6, tmp_path / "ckpt"))
    same, lower = _trainer(), _trainer(lr=1e-4)
    for trainer in (same, lower):
        load_resume_state(trainer, tmp_path / "ckpt", rank=0)
    assert [g["lr"] for g in lower.engine.optimizer.param_groups] == [1e-4]
    assert [g["lr"] for g in same.engine.optimizer.param_groups] == [1e-3]
    for a, b in zip(same.engine.optimizer.state.values(), lower.engine.optimizer.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_resume_refuses_another_architecture(tmp_path):
    trainer = _trainer()
    _run(trainer, 6, keep=(6, tmp_path / "ckpt"))
    torch.manual_seed(0)
    other = build_prior(W_DIM, E_DIM, PriorSize(num_attention_heads=2, attention_head_dim=8, num_layers=2))
    wrong = PriorTrainer(make_engine(other, OptimizerSpec(lr=1e-3), "plain"), train_scheduler("sample", 100), 0)
    with pytest.raises(ValueError, match="num_layers"):
        load_resume_state(wrong, tmp_path / "ckpt", rank=0)
    with pytest.raises(FileNotFoundError, match="not a train-prior checkpoint"):
        load_resume_state(trainer, tmp_path, rank=0)


def test_checkpoint_folders_are_removed_after_report_and_on_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the loop makes its folders; restored after
    seen = []

    def report(metrics, ckpt):
        if ckpt is not None:
            assert ckpt.parent == tmp_path and ckpt.name.startswith("avatar3d-prior-ckpt-")
            assert (ckpt / STATE_TREE).is_dir() and (ckpt / "engine").is_dir()
            seen.append(metrics["step"])

    w, e = _data()
    opts = PriorLoopOptions(total_steps=7, steps_per_tick=3, checkpoint_ticks=2)
    training_loop(_trainer(), array_batches(w, e, 8, seed=1), opts, LoopHooks(report=report, print=lambda *_: None))
    assert seen == [6, 7] and list(tmp_path.iterdir()) == []

    def fail(metrics, ckpt):
        if ckpt is not None:
            raise RuntimeError("storage unreachable")

    with pytest.raises(RuntimeError, match="storage unreachable"):
        training_loop(_trainer(), array_batches(w, e, 8, seed=1), opts, LoopHooks(report=fail, print=lambda *_: None))
    assert list(tmp_path.iterdir()) == []
