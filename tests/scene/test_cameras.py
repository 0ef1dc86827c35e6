"""The EG3D camera convention, checked against hand-computed matrices."""
import math

import numpy as np
import pytest
import torch

from avatar3d.scene import cameras as C

R = C.EG3D_RADIUS


def test_front_view_matrix_by_hand():
    # Camera at (0, 0, r) looking down -z: image right = +x, image down = -y.
    expected = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, R], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(C.cam2world(0, 0), expected, atol=1e-12)


def test_yaw_plus_90_is_the_subjects_left_side():
    # Camera at (+r, 0, 0) looking down -x; image right is world -z (the back of the head),
    # so the face (+z) points to image-left.
    expected = np.array([[0, 0, -1, R], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(C.cam2world(90, 0), expected, atol=1e-12)


def test_back_view_matrix_by_hand():
    expected = np.array([[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, -R], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(C.cam2world(180, 0), expected, atol=1e-12)


def test_pitched_view_looks_down_from_above():
    e = math.radians(30)
    c2w = C.cam2world(0, 30)
    np.testing.assert_allclose(c2w[:3, 3], [0, R * math.sin(e), R * math.cos(e)], atol=1e-12)
    # Forward points at the origin: down and towards -z.
    np.testing.assert_allclose(c2w[:3, 2], [0, -math.sin(e), -math.cos(e)], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], [0, -math.cos(e), math.sin(e)], atol=1e-12)


@pytest.mark.parametrize("pivot", [C.HEAD_PIVOT, C.EG3D_FACE_PIVOT])
def test_rotation_orthonormal_and_looks_at_pivot(pivot):
    rng = np.random.default_rng(0)
    yaw, pitch = rng.uniform(-180, 180, 64), rng.uniform(-30, 30, 64)
    c2w = C.cam2world(yaw, pitch, pivot=pivot)
    rot = c2w[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    to_pivot = np.asarray(pivot) - c2w[:, :3, 3]
    to_pivot /= np.linalg.norm(to_pivot, axis=-1, keepdims=True)
    np.testing.assert_allclose(c2w[:, :3, 2], to_pivot, atol=1e-12)
    # No roll: the camera x axis stays horizontal.
    np.testing.assert_allclose(c2w[:, 1, 0], 0.0, atol=1e-12)
    # The pivot projects to the principal point.
    for label in C.make_label(c2w)[:4]:
        uv, z = C.project_points(np.asarray([pivot]), label, 512)
        np.testing.assert_allclose(uv[0], [256, 256], atol=1e-9)
        assert z[0] > 0


def test_matches_eg3d_lookat_pose_sampler():
    """EG3D's LookAtPoseSampler maths (re-derived): for the same camera position the matrix is identical."""
    def eg3d_lookat(h, v, radius, lookat):
        v = min(max(v, 1e-5), math.pi - 1e-5)
        phi = math.acos(1 - 2 * (v / math.pi))
        theta = h
        origin = np.array([radius * math.sin(phi) * math.cos(math.pi - theta),
                           radius * math.cos(phi),
                           radius * math.sin(phi) * math.sin(math.pi - theta)])
        fwd = np.asarray(lookat) - origin
        fwd /= np.linalg.norm(fwd)
        up = np.array([0.0, 1.0, 0.0])
        right = -np.cross(up, fwd)
        right /= np.linalg.norm(right)
        up = np.cross(fwd, right)
        up /= np.linalg.norm(up)
        m = np.eye(4)
        m[:3, :3] = np.stack([right, up, fwd], axis=-1)
        m[:3, 3] = origin
        return m

    for yaw, pitch in [(0, 0), (35, 10), (-120, -25), (170, 28)]:
        h = math.pi / 2 + math.radians(yaw)
        v = math.pi / 2 + float(C.eg3d_pitch_from_elevation(pitch))
        ref = eg3d_lookat(h, v, R, C.EG3D_FACE_PIVOT)
        ours = C.cam2world(yaw, pitch, pivot=C.EG3D_FACE_PIVOT)
        np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_label_layout_and_intrinsics():
    label = C.camera_label(20, 5)
    assert label.shape == (25,)
    np.testing.assert_allclose(label[:16].reshape(4, 4), C.cam2world(20, 5))
    np.testing.assert_allclose(label[16:], [C.EG3D_FOCAL, 0, 0.5, 0, C.EG3D_FOCAL, 0.5, 0, 0, 1])
    assert C.focal_from_fov(18.837) == pytest.approx(4.2647, abs=2e-3)
    assert C.focal_from_fov(C.fov_from_focal(4.2647)) == pytest.approx(4.2647, rel=1e-9)


def test_label_round_trips_to_yaw_pitch_scalar_and_batch():
    yaw, pitch = C.label_to_yaw_pitch(C.camera_label(-135.0, 17.0))
    assert float(yaw) == pytest.approx(-135.0) and float(pitch) == pytest.approx(17.0)
    rng = np.random.default_rng(1)
    y, p = rng.uniform(-179.9, 179.9, (3, 5)), rng.uniform(-30, 30, (3, 5))
    labels = C.camera_label(y, p)
    assert labels.shape == (3, 5, 25)
    y2, p2 = C.label_to_yaw_pitch(labels)
    np.testing.assert_allclose(y2, y, atol=1e-9)
    np.testing.assert_allclose(p2, p, atol=1e-9)


def test_flip_is_an_involution_that_negates_yaw():
    rng = np.random.default_rng(2)
    y, p = rng.uniform(-180, 180, 32), rng.uniform(-30, 30, 32)
    labels = C.camera_label(y, p)
    flipped = C.flip_label(labels)
    np.testing.assert_array_equal(C.flip_label(flipped), labels)
    y2, p2 = C.label_to_yaw_pitch(flipped)
    np.testing.assert_allclose(C.wrap_degrees(y2 + y), 0.0, atol=1e-9)
    np.testing.assert_allclose(p2, p, atol=1e-9)
    # The mirrored label is the label of the mirrored camera.
    np.testing.assert_allclose(flipped, C.camera_label(-y, p), atol=1e-12)


def test_flip_label_matches_flipped_image_projection():
    # A point's projection under the flipped label lands at the mirrored pixel of its mirrored point.
    label = C.camera_label(40, 12)
    point = np.array([[0.1, 0.2, 0.3]])
    uv, _ = C.project_points(point, label, 100)
    uv_f, _ = C.project_points(point * [-1, 1, 1], C.flip_label(label), 100)
    np.testing.assert_allclose(uv_f[0], [100 - uv[0, 0], uv[0, 1]], atol=1e-9)
    img = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3)
    np.testing.assert_array_equal(C.flip_image(img)[:, :, 0], img[:, :, -1])


def test_sampler_ranges_and_determinism():
    s = C.CameraSampler()
    y1, p1, l1 = s.sample(np.random.default_rng(5), 1000)
    y2, p2, l2 = s.sample(np.random.default_rng(5), 1000)
    np.testing.assert_array_equal(l1, l2)
    assert y1.min() >= -180 and y1.max() <= 180 and p1.min() >= -30 and p1.max() <= 30
    assert y1.min() < -170 and y1.max() > 170  # covers the back of the head
    assert l1.shape == (1000, 25)


def test_rays_through_pixel_centres():
    label = torch.tensor(C.camera_label([0.0, 90.0], [0.0, 20.0]))
    res = 8
    origins, dirs = C.camera_rays(label, res)
    assert origins.shape == dirs.shape == (2, res * res, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(2, res * res, dtype=label.dtype))
    # Pixel (row 0, col 0) is top-left: for the front camera it points to -x (left) and +y (up).
    d = dirs[0, 0]
    assert d[0] < 0 and d[1] > 0 and d[2] < 0
    # Each ray projects back onto its own pixel centre.
    pts = (origins + 2.0 * dirs)[1].numpy()
    uv, _ = C.project_points(pts, label[1].numpy(), res)
    rows, cols = np.divmod(np.arange(res * res), res)
    np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], -1), atol=1e-9)


def test_bad_label_size_is_a_clear_error():
    with pytest.raises(ValueError, match="25 values"):
        C.label_to_yaw_pitch(np.zeros(24))


def test_full_head_defaults_are_eg3ds_focal_an_origin_pivot_and_radius_2_7():
    """README: the stored focal is 4.2647 (EG3D's face data); the full-head default is pivot (0, 0, 0),
    radius 2.7; and these are what the dataset's specs carry (the datagen job's camera sampler)."""
    from avatar3d.datagen.specs import sample_specs

    assert C.EG3D_FOCAL == 4.2647
    assert C.HEAD_PIVOT == (0.0, 0.0, 0.0) and C.EG3D_RADIUS == 2.7
    assert (C.CameraSampler().focal, C.CameraSampler().pivot, C.CameraSampler().radius) == (4.2647, (0, 0, 0), 2.7)
    specs = sample_specs(40, seed=3, guidance="hybrid")
    labels = np.array([s.camera for s in specs])
    c2w, k = labels[:, :16].reshape(-1, 4, 4), labels[:, 16:].reshape(-1, 3, 3)
    np.testing.assert_allclose(k[:, [0, 1], [0, 1]], 4.2647)  # fx, fy: the stored focal, as labels carry it
    centres, forward = c2w[:, :3, 3], c2w[:, :3, 2]  # OpenCV: the camera looks down its +z axis
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2.7, atol=1e-12)
    np.testing.assert_allclose(centres + 2.7 * forward, 0.0, atol=1e-12)  # every view looks at the origin
    assert np.ptp([s.yaw for s in specs]) > 90  # not one view repeated
