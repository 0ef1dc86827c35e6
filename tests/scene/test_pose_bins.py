import numpy as np
import pytest

from avatar3d.scene.pose_bins import PoseBins, pitch_bin, view_group, yaw_bin


def test_coarse_yaw_bins_centred_on_front_left_back_right():
    assert yaw_bin([0, 44.9, 45.1, 90, 134.9, 135.1, 180, -180, -90, -45.1, -44.9], 4).tolist() == [
        0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 0]


def test_fine_yaw_bins_are_10_degrees_centred_on_zero():
    assert yaw_bin([-4.99, 0, 4.99, 5.01, 14.99, 15.01, 180, -5.01], 36).tolist() == [0, 0, 0, 1, 1, 2, 18, 35]


def test_pitch_bins_even_and_clamped():
    assert pitch_bin([-30, -20.01, -19.99, 0, 29.99, 30, 45, -60], 6).tolist() == [0, 0, 1, 3, 5, 5, 5, 0]
    assert pitch_bin([-30, 0, 30], 1).tolist() == [0, 0, 0]


def test_label_dims_and_one_hot_structure():
    bins = PoseBins()
    assert (bins.fine_dim, bins.coarse_dim, bins.label_dim) == (42, 5, 47)
    rng = np.random.default_rng(0)
    yaw, pitch = rng.uniform(-180, 180, 200), rng.uniform(-30, 30, 200)
    lab = bins.label(yaw, pitch)
    assert lab.shape == (200, 47)
    # exactly one hot per block: fine yaw, fine pitch, coarse yaw, coarse pitch
    for lo, hi in [(0, 36), (36, 42), (42, 46), (46, 47)]:
        np.testing.assert_array_equal(lab[:, lo:hi].sum(-1), 1.0)
    fy, fp = bins.fine_bins(yaw, pitch)
    np.testing.assert_array_equal(lab[:, :36].argmax(-1), fy)
    np.testing.assert_array_equal(lab[:, 36:42].argmax(-1), fp)


def test_index_round_trip_and_scalar_input():
    bins = PoseBins()
    idx = bins.fine_index(93.0, -12.0)
    assert idx.shape == () and int(idx) == 9 * 6 + 1
    one = bins.fine_onehot(idx)
    assert one.shape == (42,) and one[9] == 1 and one[36 + 1] == 1
    with pytest.raises(ValueError, match="out of range"):
        bins.coarse_onehot(np.array([4]))


def test_view_groups():
    assert view_group(0) == "front" and view_group(45) == "front" and view_group(-46) == "side"
    assert view_group(135) == "back" and view_group(-180) == "back" and view_group(90) == "side"
    assert view_group(np.array([0.0, 100.0, 179.0])).tolist() == ["front", "side", "back"]
