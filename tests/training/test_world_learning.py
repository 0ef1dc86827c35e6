"""Learning in the procedural world at a test's budget (docs/method.md section 9).

Fixed steps, no timing. A micro GAN (32 px) trains on a procedural dataset with the painter's
default failure modes through the real training loop, and its EMA generator is scored with the
truth metrics.

What 300 steps of 8 images show, measured: the generator learns a head-and-shoulders volume that
agrees with held-out identities at held-out cameras (silhouette IoU 0.75 with each avatar's
silhouettes mapped from one w; 0.70 when each camera was mapped on its own), which a run with
``lr_g = 0`` does not (0.0; slow suite). What they do not show yet: that volume does not beat the
mean-silhouette baseline (0.89; where identities differ 0.36 vs 0.50); a run with shuffled camera
labels reaches 0.72 (one seed, 2026-12-06, two threads: too close to assert), and view consistency
is at chance for both (mean 0.28 vs 0.31; 0.35 vs 0.36 and, with the crisp classifier, 0.32 vs
0.30 in earlier measurements). Those claims
need far longer training than a test can afford: at 16.4 kimg the labels arm's views are 0.86-0.97
per group against the shuffled arm's 0.10-0.31 (evaluation/gan/README.md, "The long run against
its shuffled-label control").
"""
import numpy as np
import pytest

from avatar3d.datagen.dataset import read_table
from avatar3d.evaluation.truth import TruthWorld, train_view_classifier
from avatar3d.gan.config import GANConfig
from avatar3d.training.data import decode_batch
from avatar3d.training.loop import LoopHooks, LoopOptions, build_trainer, training_loop
from tests.training.fixtures import MICRO_GAN, write_procedural_dataset

SIZE = 32
BATCH = 8
STEPS = 300
WORLD_GAN = GANConfig.tiny(**{**MICRO_GAN, "sr_channels": (16, 16), "white_back": True, "blur_fade_kimg": 0.5,
                              "gpc_fade_kimg": 0.5, "ema_kimg": 0.1})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = write_procedural_dataset(tmp_path_factory.mktemp("world"), n=384, size=SIZE, seed=0)
    rows = read_table(folder, columns=["image_png", "camera", "style"]).to_pydict()
    classifier = train_view_classifier(sorted(set(rows["style"])), num_train=384, num_test=96, steps=250)
    # attributes="none": the figures of this file's docstring were measured with held-out identities naming none
    truth = TruthWorld.build(folder, SIZE, num_identities=32, kid_per_group=24, classifier=classifier,
                             attributes="none")
    return rows, truth


def _train(rows, gan_cfg, shuffle_labels=False, seed=0):
    trainer = build_trainer(gan_cfg, None, seed=seed, rank=0, world_size=1, device="cpu")
    n = len(rows["camera"]) // BATCH

    def batches():
        k = 0
        while True:
            i = (k % n) * BATCH
            yield decode_batch({c: rows[c][i:i + BATCH] for c in ("image_png", "camera")}, SIZE, True,
                               np.random.default_rng([seed, k]), shuffle_labels=shuffle_labels)
            k += 1

    opts = LoopOptions(total_kimg=STEPS * BATCH / 1000, kimg_per_tick=STEPS * BATCH / 1000, snapshot_ticks=10**6,
                       image_ticks=10**6)
    training_loop(trainer, batches(), opts, LoopHooks(print=lambda *_: None))
    return trainer.G_ema


_RUNS = {}


def _arm(world, name):
    """Each arm trained once per session."""
    if name not in _RUNS:
        rows, truth = world
        cfg = WORLD_GAN.replace(lr_g=0.0) if name == "frozen" else WORLD_GAN
        _RUNS[name] = truth.evaluate(_train(rows, cfg, name == "shuffled"), num_avatars=24).values
    return _RUNS[name]


LEARNED = 0.6  # silhouette IoU at held-out cameras: measured 0.75 after training, 0.0 untrained


def test_short_training_learns_a_head_and_shoulders_volume(world):
    m = _arm(world, "labels")
    print({k: round(v, 3) for k, v in m.items()})
    assert m["sil_agreement"] > LEARNED, m


@pytest.mark.slow
def test_the_claim_fails_when_the_generator_does_not_learn(world):
    frozen = _arm(world, "frozen")
    assert not frozen["sil_agreement"] > LEARNED, frozen
