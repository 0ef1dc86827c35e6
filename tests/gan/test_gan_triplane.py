"""Tri-plane lookup: the corrected XY / XZ / ZY axes and the box scaling."""
import torch

from avatar3d.gan.triplane import PLANE_AXES, sample_triplane

torch.set_num_threads(1)


def _linear_planes(res=64):
    """Linear ramps over the plane: u along the width, v along the height, at pixel centres."""
    lin = (torch.arange(res) + 0.5) / res * 2 - 1  # pixel-centre coordinates in [-1, 1]
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    return u, v


def test_each_plane_sees_its_own_pair_of_axes():
    assert PLANE_AXES == ((0, 1), (0, 2), (2, 1))
    u, v = _linear_planes()
    pts = (torch.rand(1, 50, 1, 3) - 0.5) * 0.8  # inside [-0.4, 0.4]^3
    box = 1.0
    scale = 2.0 / box
    for k, (a, b) in enumerate(PLANE_AXES):
        for coord, axis in ((u, a), (v, b)):
            planes = torch.zeros(1, 3, 1, 64, 64)
            planes[0, k, 0] = coord
            got = sample_triplane(planes, pts, box)[0, 0, :, 0]
            # Mean over three planes, two are zero; bilinear reproduces a linear ramp exactly.
            torch.testing.assert_close(got * 3, pts[0, :, 0, axis] * scale, atol=1e-5, rtol=1e-5)


def test_yz_plane_exists_and_xz_is_not_duplicated():
    # A feature varying with y on plane 2 must vary with y at fixed x, z (the buggy EG3D planes had no YZ).
    u, v = _linear_planes()
    planes = torch.zeros(1, 3, 1, 64, 64)
    planes[0, 2, 0] = v
    pts = torch.tensor([[[[0.1, -0.3, 0.2]], [[0.1, 0.3, 0.2]]]])
    got = sample_triplane(planes, pts, 1.0)[0, 0, :, 0]
    assert got[1] - got[0] > 0.3


def test_points_outside_the_box_get_zero_features():
    planes = torch.ones(2, 3, 4, 16, 16)
    pts = torch.tensor([[[[0.0, 0.0, 0.0]], [[2.0, 2.0, 2.0]]]]).expand(2, -1, -1, -1)
    got = sample_triplane(planes, pts, box_warp=1.0)
    assert got.shape == (2, 4, 2, 1)
    torch.testing.assert_close(got[:, :, 0], torch.ones(2, 4, 1))
    torch.testing.assert_close(got[:, :, 1], torch.zeros(2, 4, 1))
