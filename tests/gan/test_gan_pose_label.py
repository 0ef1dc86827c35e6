"""Coarse-to-fine pose labels for the discriminator."""
import numpy as np
import pytest
import torch

from avatar3d.gan import CoarseToFineSelector, GANConfig, pose_label, yaw_pitch_from_camera
from avatar3d.scene.cameras import camera_label, flip_label
from avatar3d.scene.pose_bins import PoseBins

torch.set_num_threads(1)
BINS = PoseBins()


def _cams(n, seed=0):
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-180, 180, n)
    pitch = rng.uniform(-30, 30, n)
    return yaw, pitch, torch.tensor(camera_label(yaw, pitch))


def test_torch_labels_equal_pose_bins_numpy_labels():
    yaw, pitch, c = _cams(500)
    y, p = yaw_pitch_from_camera(c)
    np.testing.assert_allclose(y.numpy(), yaw, atol=1e-9)
    np.testing.assert_allclose(p.numpy(), pitch, atol=1e-9)
    np.testing.assert_array_equal(pose_label(y, p, BINS).numpy(), BINS.label(yaw, pitch))


def test_exactly_one_part_is_zeroed_per_sample():
    _, _, c = _cams(300)
    cond = CoarseToFineSelector(BINS)(c, torch.Generator().manual_seed(1))
    fine, coarse = cond.label[:, :BINS.fine_dim], cond.label[:, BINS.fine_dim:]
    assert cond.label.shape == (300, BINS.label_dim)
    # A kept part is a yaw one-hot + a pitch one-hot (sum 2); the other part is all zero.
    np.testing.assert_array_equal(fine.sum(1).numpy(), np.where(cond.use_fine.numpy(), 2, 0))
    np.testing.assert_array_equal(coarse.sum(1).numpy(), np.where(cond.use_fine.numpy(), 0, 2))


@pytest.mark.parametrize("thr, p_rel, p_other", [(45.0, 0.9, 0.2), (30.0, 0.7, 0.05)])
def test_selection_rates_match_the_configuration(thr, p_rel, p_other):
    n = 40000
    yaw, pitch, c = _cams(n, seed=3)
    sel = CoarseToFineSelector(BINS, "coarse_to_fine", thr, p_rel, p_other)
    use = sel(c, torch.Generator().manual_seed(0)).use_fine.numpy()
    front = np.abs(yaw) <= thr
    # Binomial standard error is < 0.005 for these counts; allow 4 sigma.
    assert abs(use[front].mean() - p_rel) < 0.02
    assert abs(use[~front].mean() - p_other) < 0.01


def test_modes_fine_and_coarse_are_deterministic():
    _, _, c = _cams(200)
    assert CoarseToFineSelector(BINS, "fine")(c).use_fine.all()
    assert not CoarseToFineSelector(BINS, "coarse")(c).use_fine.any()
    with pytest.raises(ValueError, match="mode"):
        CoarseToFineSelector(BINS, "both")


def test_same_generator_seed_same_selection():
    _, _, c = _cams(100)
    sel = CoarseToFineSelector.from_config(GANConfig.tiny())
    a = sel(c, torch.Generator().manual_seed(7)).label
    b = sel(c, torch.Generator().manual_seed(7)).label
    torch.testing.assert_close(a, b)


def test_mirrored_camera_gets_the_mirrored_label_and_probability():
    yaw, pitch, c = _cams(400, seed=5)
    cf = torch.tensor(flip_label(c.numpy()))
    y, p = yaw_pitch_from_camera(cf)
    np.testing.assert_allclose(y.numpy(), -yaw, atol=1e-9)
    np.testing.assert_array_equal(pose_label(y, p, BINS).numpy(), BINS.label(-yaw, pitch))
    sel = CoarseToFineSelector(BINS)
    torch.testing.assert_close(sel.p_fine(y), sel.p_fine(torch.tensor(yaw)))
    # Coarse bins are symmetric about the front: left <-> right swap, front and back stay.
    coarse = pose_label(torch.tensor(yaw), torch.tensor(pitch), BINS)[:, BINS.fine_dim:BINS.fine_dim + 4]
    coarse_f = pose_label(y, p, BINS)[:, BINS.fine_dim:BINS.fine_dim + 4]
    torch.testing.assert_close(coarse_f, coarse[:, [0, 3, 2, 1]])
