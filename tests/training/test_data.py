"""Decoding training batches: scale, resize, mirror with the label."""
import warnings

import numpy as np
import pytest
import torch

from avatar3d.datagen.dataset import read_table
from avatar3d.scene.cameras import flip_label, label_to_yaw_pitch
from avatar3d.training.data import decode_batch, decode_images


def _rows(path):
    return read_table(path).to_pydict()


def test_decode_scales_to_minus_one_one_and_resizes(head_dataset):
    rows = _rows(head_dataset)
    batch = decode_batch({k: rows[k][:4] for k in ("image_png", "camera")}, 16, False, np.random.default_rng(0))
    assert batch.images.shape == (4, 3, 16, 16) and batch.cameras.shape == (4, 25)
    assert batch.images.min() >= -1 and batch.images.max() <= 1 and batch.images.std() > 0.05
    np.testing.assert_allclose(batch.cameras.numpy(), np.asarray(rows["camera"][:4]), atol=1e-6)


def test_mirror_flips_image_and_label_together(head_dataset):
    rows = _rows(head_dataset)
    sub = {k: rows[k][:16] for k in ("image_png", "camera")}
    plain = decode_batch(sub, 32, False, np.random.default_rng(0))
    mirrored = decode_batch(sub, 32, True, np.random.default_rng(0))
    flipped = ~np.isclose(mirrored.cameras.numpy(), plain.cameras.numpy()).all(1)
    assert 0 < flipped.sum() < 16  # about half
    for i in range(16):
        if flipped[i]:
            assert np.array_equal(mirrored.images[i].numpy(), plain.images[i].numpy()[:, :, ::-1])
            np.testing.assert_allclose(mirrored.cameras[i].numpy(), flip_label(np.asarray(rows["camera"][i])), atol=1e-6)
            y0, _ = label_to_yaw_pitch(np.asarray(rows["camera"][i]))
            y1, _ = label_to_yaw_pitch(mirrored.cameras[i].numpy().astype(np.float64))
            assert abs(((y0 + y1 + 180) % 360) - 180) < 1e-3
        else:
            assert np.array_equal(mirrored.images[i].numpy(), plain.images[i].numpy())


def test_shuffled_labels_move_every_camera_to_another_image_and_keep_the_set(head_dataset):
    """The control run's labels: the batch's cameras permuted with no fixed point, images untouched."""
    rows = _rows(head_dataset)
    sub = {k: rows[k][:8] for k in ("image_png", "camera")}
    plain = decode_batch(sub, 16, False, np.random.default_rng(3))
    for seed in range(20):
        shuffled = decode_batch(sub, 16, False, np.random.default_rng(seed), shuffle_labels=True)
        assert np.array_equal(shuffled.images.numpy(), plain.images.numpy())
        cams, orig = shuffled.cameras.numpy(), plain.cameras.numpy()
        assert not np.isclose(cams, orig).all(1).any()  # no image keeps its own camera
        assert sorted(map(tuple, cams.round(6))) == sorted(map(tuple, orig.round(6)))  # same cameras, reassigned
    again = decode_batch(sub, 16, False, np.random.default_rng(5), shuffle_labels=True)
    same = decode_batch(sub, 16, False, np.random.default_rng(5), shuffle_labels=True)
    assert np.array_equal(again.cameras.numpy(), same.cameras.numpy())  # resumable: the batch's seed decides


def test_predecoded_rows_give_the_same_batch_as_png_rows(head_dataset):
    """Under Ray the PNGs are decoded upstream (decode_images in Ray Data); the worker's batch, flips and
    shuffled labels included, must equal the one decoded from PNG bytes with the same rng."""
    rows = _rows(head_dataset)
    sub = {k: rows[k][:8] for k in ("image_png", "camera")}
    decoded = decode_images(sub, 16)
    assert decoded["image"].dtype == np.uint8 and decoded["image"].shape == (8, 16, 16, 3)
    assert decoded["camera"].shape == (8, 25)
    for k in decoded.values():  # Ray's zero-copy batches are read-only
        k.flags.writeable = False
    for mirror, shuffle in ((False, False), (True, False), (True, True)):
        a = decode_batch(sub, 16, mirror, np.random.default_rng(7), shuffle_labels=shuffle)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. torch's "The given NumPy array is not writable"
            b = decode_batch(decoded, 16, mirror, np.random.default_rng(7), shuffle_labels=shuffle)
        assert torch.equal(a.images, b.images) and torch.equal(a.cameras, b.cameras)
        assert b.images.stride() == a.images.stride()  # same memory layout (channels-last) as before
    assert np.array_equal(decoded["image"], decode_images(sub, 16)["image"])  # inputs left untouched


def test_predecoded_rows_at_another_resolution_are_refused(head_dataset):
    rows = _rows(head_dataset)
    decoded = decode_images({k: rows[k][:2] for k in ("image_png", "camera")}, 16)
    with pytest.raises(ValueError, match=r"decoded images are uint8 \(16, 16, 3\), expected uint8 \(32, 32, 3\)"):
        decode_batch(decoded, 32, False, np.random.default_rng(0))
