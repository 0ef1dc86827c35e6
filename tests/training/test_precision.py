"""precision=bf16: a few CPU training steps of the GAN and of the prior under bf16 autocast, against fp32.

bf16 keeps 8 significant bits (a relative spacing of 2**-8 = 0.4%), and each loss comes out of some 20
rounded matmuls / convolutions. On the first step (same weights, only rounding differs) the GAN's losses
were within 0.6% of fp32's: the tolerance is 2% + 1e-3. After that the two runs' weights drift apart a
little each step (measured up to 4% by the 4th GAN step; the prior stays within 0.05%): 10% + 1e-3 there.
A step that ignored the option matches fp32 exactly, which is checked too.
"""
import numpy as np
import pytest
import torch

from avatar3d.datagen.dataset import read_table
from avatar3d.prior.loop import PriorLoopOptions, array_batches
from avatar3d.prior.loop import training_loop as prior_training_loop
from avatar3d.training.loop import LoopHooks, LoopOptions, build_trainer, training_loop
from tests.prior.test_loop import _data as prior_data
from tests.prior.test_loop import _trainer as prior_trainer
from tests.training.test_loop import CFG, _batches

FIRST_RTOL, LATER_RTOL, ATOL = 0.02, 0.10, 1e-3
# The test loop's GAN as it is, D's input blur included (sigma 10 fading: it once hung bf16 on CPU, see the last test).
GAN = CFG


@pytest.fixture(scope="module")
def rows(head_dataset):
    return read_table(head_dataset).to_pydict()


def _gan(rows, precision: str, steps: int = 4):
    trainer = build_trainer(GAN, None, seed=0, rank=0, world_size=1, device="cpu")
    reports = []
    opts = LoopOptions(total_kimg=steps * 0.004, kimg_per_tick=0.004, snapshot_ticks=10**6, image_ticks=10**6,
                       precision=precision)
    hooks = LoopHooks(report=lambda m, c: reports.append(m), print=lambda *_: None)
    training_loop(trainer, _batches(rows), opts, hooks)
    return trainer, [{k: v for k, v in m.items() if k.startswith("loss")} for m in reports]


def _moved(after, before) -> torch.Tensor:
    return torch.cat([(a.detach() - b.detach()).flatten() for a, b in zip(after, before)])


def _check_close_but_not_equal(bf16: list[dict[str, float]], fp32: list[dict[str, float]]) -> None:
    assert [m.keys() for m in bf16] == [m.keys() for m in fp32]
    for step, (b, f) in enumerate(zip(bf16, fp32)):
        rtol = FIRST_RTOL if step == 0 else LATER_RTOL
        for key in f:
            assert np.isfinite(b[key]), (step, key)
            assert abs(b[key] - f[key]) <= rtol * abs(f[key]) + ATOL, (step, key, b[key], f[key])
    assert any(b[k] != f[k] for b, f in zip(bf16, fp32) for k in f), "bf16 losses equal fp32's: no autocast ran"


def test_gan_steps_in_bf16_track_fp32(rows):
    init = build_trainer(GAN, None, seed=0, rank=0, world_size=1, device="cpu")
    fp32, fp32_losses = _gan(rows, "fp32")
    bf16, bf16_losses = _gan(rows, "bf16")
    _check_close_but_not_equal(bf16_losses, fp32_losses)
    for net in ("G", "D", "G_ema"):
        params = list(getattr(bf16, net).parameters())
        assert all(p.dtype == torch.float32 for p in params), net  # autocast, not a bf16 copy of the weights
        step_bf16 = _moved(params, getattr(init, net).parameters())
        step_fp32 = _moved(getattr(fp32, net).parameters(), getattr(init, net).parameters())
        assert step_bf16.abs().max() > 0, net
        # The same training direction: measured cosine 0.95 (G, G_ema) / 0.96 (D) after 4 steps.
        assert torch.nn.functional.cosine_similarity(step_bf16, step_fp32, dim=0) > 0.9, net


def _prior(precision: str):
    trainer = prior_trainer()
    w, e = prior_data()
    losses = []
    opts = PriorLoopOptions(total_steps=6, steps_per_tick=1, checkpoint_ticks=10**6, cond_drop_prob=0.2,
                            precision=precision)
    prior_training_loop(trainer, array_batches(w, e, 8, seed=1), opts,
                        LoopHooks(report=lambda m, c: losses.append({"loss": m["loss"]}), print=lambda *_: None))
    return trainer, losses


def test_prior_steps_in_bf16_track_fp32():
    init = prior_trainer()
    fp32, fp32_losses = _prior("fp32")
    bf16, bf16_losses = _prior("bf16")
    assert len(bf16_losses) == 6
    _check_close_but_not_equal(bf16_losses, fp32_losses)
    params = list(bf16.prior.parameters())
    assert all(p.dtype == torch.float32 for p in params)
    step_bf16 = _moved(params, init.prior.parameters())
    step_fp32 = _moved(fp32.prior.parameters(), init.prior.parameters())
    assert step_bf16.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(step_bf16, step_fp32, dim=0) > 0.9


BLUR = """
import time, torch
from avatar3d.gan.layers import gaussian_blur2d
torch.set_num_threads(1)
real = torch.rand(4, 32, 32, 3).permute(0, 3, 1, 2)  # channels-last, as decode_batch makes training images
start = time.time()
with torch.autocast("cpu", dtype=torch.bfloat16):
    out = gaussian_blur2d(real, 10.0)  # D's input blur at the start of training (blur_init_sigma=10)
print(round(time.time() - start, 3), torch.isfinite(out.float()).all().item())
"""


def test_bf16_blur_of_channels_last_images_finishes():
    """CPU bf16 training blurs D's real images: it must take milliseconds (0.007 s on a contiguous copy)."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", BLUR], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("gaussian_blur2d under CPU bf16 autocast did not finish in 30 s")
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, finite = done.stdout.split()
    assert float(seconds) < 5 and finite == "True"
