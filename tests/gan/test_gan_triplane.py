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


def _lookup_case(seed=0, n=2, rays=29, samples=7, c=8, res=12):
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(n, 3, c, res, res, generator=g)
    # [-0.65, 0.65]^3 with a unit box: some points fall outside the planes, some straddle the edge.
    points = (torch.rand(n, rays, samples, 3, generator=g) - 0.5) * 1.3
    return planes, points


def _grid_sample_sum(planes, points, box_warp=1.0):
    coords = points * (2.0 / box_warp)
    return sum(torch.nn.functional.grid_sample(planes[:, k], coords[..., [u, v]], align_corners=False)
               for k, (u, v) in enumerate(PLANE_AXES))


def _stacked_lookup(planes, points, box_warp=1.0, reduce="mean"):
    """The lookup before 5a9c048: one grid_sample over an (N*3)-stacked copy of planes and grids, then reduced."""
    n, _, c, h, w = planes.shape
    a, b = points.shape[1:3]
    grid = (points * (2.0 / box_warp))[..., torch.tensor(PLANE_AXES)]  # (N, A, B, 3, 2)
    grid = grid.permute(0, 3, 1, 2, 4).reshape(n * 3, a, b, 2)
    feats = torch.nn.functional.grid_sample(planes.reshape(n * 3, c, h, w), grid, align_corners=False)
    feats = feats.view(n, 3, c, a, b)
    return feats.sum(1) if reduce == "sum" else feats.mean(1)


def test_per_plane_lookup_is_bit_identical_to_the_stacked_lookup():
    """evaluation/gan/README.md ("What made it faster", 1) claims the same bits, forward and backward."""
    for seed, reduce in ((0, "sum"), (1, "mean")):
        planes, points = _lookup_case(seed=seed, c=32, res=16)
        n, _, c, h, w = planes.shape
        # Contiguous planes, and the channels-last view the CPU synthesis network hands the renderer.
        nhwc = planes.reshape(n, 3 * c, h, w).contiguous(memory_format=torch.channels_last)
        for layout in (planes.clone(), nhwc.view(n, 3, c, h, w)):
            leaf = layout.detach().requires_grad_(True)
            ref_planes = planes.clone().requires_grad_(True)
            out = sample_triplane(leaf, points, 0.9, reduce=reduce)
            ref = _stacked_lookup(ref_planes, points, 0.9, reduce=reduce)
            assert torch.equal(out, ref), (out - ref).abs().max()
            grad = torch.randn_like(ref)
            out.backward(grad)
            ref.backward(grad)
            assert ref_planes.grad.abs().sum() > 0
            assert torch.equal(leaf.grad, ref_planes.grad), (leaf.grad - ref_planes.grad).abs().max()


def test_compiled_cpu_kernel_matches_grid_sample_forward_and_backward(compiled_ops):
    planes, points = _lookup_case()
    p_native = planes.clone().requires_grad_(True)
    p_ref = planes.clone().requires_grad_(True)
    out = sample_triplane(p_native, points, 0.9, reduce="sum", compiled=True)
    ref = _grid_sample_sum(p_ref, points, 0.9)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert p_ref.grad.abs().sum() > 0
    torch.testing.assert_close(p_native.grad, p_ref.grad, rtol=1e-5, atol=1e-5)
    # Points far outside the box (and exactly on its faces) match too.
    edge = torch.tensor([[[[5.0, 0.0, 0.0], [0.45, 0.45, -0.45], [-0.45, 0.45, 0.45], [0.0, -9.0, 3.0]]]])
    torch.testing.assert_close(sample_triplane(planes[:1], edge, 0.9, reduce="sum", compiled=True),
                               _grid_sample_sum(planes[:1], edge, 0.9), rtol=1e-5, atol=1e-6)


def test_pytorch_path_unless_asked_for_or_when_disabled_or_points_need_gradients(compiled_ops, monkeypatch):
    planes, points = _lookup_case(seed=1)
    ref = _grid_sample_sum(planes, points)
    # Enabled in this process, but not asked for (every eval-mode render): bit-identical to grid_sample.
    assert torch.equal(sample_triplane(planes, points, reduce="sum"), ref)
    assert not torch.equal(sample_triplane(planes, points, reduce="sum", compiled=True), ref)  # the kernel ran
    monkeypatch.setenv("AVATAR3D_NATIVE_OPS", "0")
    assert torch.equal(sample_triplane(planes, points, reduce="sum", compiled=True), ref)
    # A gradient for the sample points (not needed by the GAN) goes through grid_sample.
    monkeypatch.setenv("AVATAR3D_NATIVE_OPS", "1")
    pts = points.clone().requires_grad_(True)
    sample_triplane(planes, pts, compiled=True).sum().backward()
    assert pts.grad is not None and pts.grad.abs().sum() > 0


def test_compiled_kernel_reads_the_channels_last_synthesis_layout_in_place(compiled_ops):
    """Planes viewed from an NHWC (N, 3 * C, H, W) tensor, as the CPU synthesis network makes them."""
    planes, points = _lookup_case(seed=2)
    n, _, c, h, w = planes.shape
    nhwc = planes.reshape(n, 3 * c, h, w).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    view = nhwc.view(n, 3, c, h, w)
    assert not view.is_contiguous() and view.stride(2) == 1
    ref_planes = planes.clone().requires_grad_(True)
    out = sample_triplane(view, points, reduce="sum", compiled=True)
    ref = _grid_sample_sum(ref_planes, points)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(nhwc.grad.view(n, 3, c, h, w), ref_planes.grad, rtol=1e-5, atol=1e-5)
