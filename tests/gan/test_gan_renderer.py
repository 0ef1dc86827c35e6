"""Volume rendering on an analytic density: a sphere of radius 0.3 at the origin."""
import pytest
import torch

from avatar3d.gan.renderer import DecoderOutput, ImportanceRenderer, OSGDecoder, importance_depths, march, \
    stratified_depths
from avatar3d.scene.cameras import camera_label, camera_rays

torch.set_num_threads(1)
RADIUS = 0.3


class SphereRenderer(ImportanceRenderer):
    """Replaces the tri-plane decoder by an analytic sphere (dense inside, empty outside)."""

    def run_model(self, planes, points):
        inside = points.norm(dim=-1) < RADIUS  # (N, A, B)
        sigma = torch.where(inside, 60.0, -10.0).to(points.dtype)[:, None]
        feats = torch.where(inside, 1.0, 0.0).to(points.dtype)[:, None].expand(-1, 3, -1, -1)
        return DecoderOutput.from_features(sigma=sigma, features=feats)


def _analytic_hits(origins, dirs):
    """Ray-sphere entry depth (inf where the ray misses)."""
    b = (origins * dirs).sum(-1)
    cc = (origins * origins).sum(-1) - RADIUS ** 2
    disc = b * b - cc
    t = -b - torch.sqrt(disc.clamp_min(0))
    return torch.where(disc > 0, t, torch.full_like(t, float("inf")))


def _renderer(importance=24):
    return SphereRenderer(OSGDecoder(), depth_samples=24, importance_samples=importance, ray_start=2.0,
                          ray_end=3.4, box_warp=1.0)


@pytest.mark.parametrize("yaw, pitch", [(0.0, 0.0), (120.0, 20.0)])
def test_sphere_depth_and_silhouette(yaw, pitch):
    torch.manual_seed(0)
    res = 32
    c = torch.tensor(camera_label(yaw, pitch)[None], dtype=torch.float32)
    o, d = camera_rays(c, res)
    out = _renderer()(torch.zeros(1, 3, 32, 8, 8), o, d, res)
    t_hit = _analytic_hits(o, d).reshape(res, res)
    hit = torch.isfinite(t_hit)
    mask = out.weight_sum[0, 0] > 0.5
    iou = (mask & hit).sum() / (mask | hit).sum()
    assert hit.sum() > 50 and iou > 0.9
    # Depth on rays well inside the silhouette: within a sample spacing of the analytic surface.
    core = hit & (t_hit < 2.7 - 0.2)
    err = (out.depth[0, 0][core] - t_hit[core]).abs()
    assert err.mean() < 0.02 and err.max() < 0.06
    # Centre pixel looks straight at the sphere: depth = r - R.
    assert out.depth[0, 0, res // 2, res // 2].item() == pytest.approx(2.7 - RADIUS, abs=0.03)
    # Colour 1 inside (-> +1 after scaling), 0 (-> -1) outside. The ray marcher averages
    # colours at interval midpoints, so the interval straddling the surface contributes 0.5.
    rgb = out.features[0, 0]
    assert rgb[core].min() > 0.0 and rgb[core].mean() > 0.5 and rgb[~hit].max() < -0.9


def test_importance_samples_concentrate_at_the_surface():
    torch.manual_seed(0)
    res = 16
    c = torch.tensor(camera_label(0.0, 0.0)[None], dtype=torch.float32)
    o, d = camera_rays(c, res)
    r = _renderer()
    depths = stratified_depths(1, res * res, 48, 2.0, 3.4, "cpu")
    pts = o[:, :, None] + depths[:, 0, :, :, None] * d[:, :, None]
    coarse = r.run_model(None, pts)
    w, _ = march(coarse.sigma, depths)
    fine = importance_depths(depths, w, 64)[0, 0]  # (R, 64)
    t_hit = _analytic_hits(o, d)[0]
    hit = torch.isfinite(t_hit)
    near = ((fine - t_hit[:, None]).abs() < 0.1).float().mean(-1)
    # A 0.2-wide shell is 1/7 of the ray range: uniform sampling would put ~14% there.
    assert near[hit].mean() > 0.7
    # Missed rays have flat weights -> samples spread over the whole range.
    assert fine[~hit].std() > 0.3


def test_empty_space_renders_transparent_and_depth_is_clamped():
    class Empty(SphereRenderer):
        def run_model(self, planes, points):
            z = torch.zeros_like(points[..., 0])[:, None]
            return DecoderOutput.from_features(sigma=z - 30.0, features=z.expand(-1, 3, -1, -1))

    r = Empty(OSGDecoder(), 8, 8, 2.0, 3.4)
    c = torch.tensor(camera_label(30.0, 0.0)[None], dtype=torch.float32)
    o, d = camera_rays(c, 8)
    out = r(torch.zeros(1, 3, 32, 4, 4), o, d, 8)
    assert out.weight_sum.max() < 1e-6
    assert torch.isfinite(out.depth).all() and out.depth.min() >= 2.0


def test_ray_count_must_match_resolution():
    c = torch.tensor(camera_label(0.0, 0.0)[None], dtype=torch.float32)
    o, d = camera_rays(c, 8)
    with pytest.raises(ValueError, match="rays"):
        _renderer()(torch.zeros(1, 3, 32, 4, 4), o, d, 9)


def test_stratified_depths_cover_the_range_in_order():
    dep = stratified_depths(2, 5, 10, 2.0, 3.4, "cpu")
    assert dep.shape == (2, 1, 5, 10)
    assert (dep[..., 1:] >= dep[..., :-1]).all()
    assert dep.min() >= 2.0 and dep.max() <= 3.4 + 1.4 / 9


def test_fast_compositing_equals_eg3d_cat_sort_gather_path():
    """The renderer composites colours in unsorted order with scattered weights and applies
    the widened sigmoid after compositing; EG3D concatenates, sorts and gathers every
    channel first. Same numbers."""
    from avatar3d.gan.renderer import composite
    from avatar3d.gan.triplane import sample_triplane

    torch.manual_seed(0)
    dec = OSGDecoder(8, 16, 8)
    r = ImportanceRenderer(dec, 12, 10, 2.0, 3.4)
    planes = torch.randn(2, 3, 8, 16, 16) * 3
    c = torch.tensor(camera_label([0.0, 70.0], [0.0, 10.0]), dtype=torch.float32)
    o, d = camera_rays(c, 8)
    torch.manual_seed(1)
    fast = r(planes, o, d, 8)
    torch.manual_seed(1)  # same random stream: stratified jitter, then the inverse-CDF draws
    o4, d4 = o[:, :, None], d[:, :, None]
    dc = stratified_depths(2, 64, 12, 2.0, 3.4, "cpu")
    oc = dec(sample_triplane(planes, o4 + dc[:, 0, ..., None] * d4))
    w, _ = march(oc.sigma, dc)
    df = importance_depths(dc, w, 10)
    of = dec(sample_triplane(planes, o4 + df[:, 0, ..., None] * d4))
    depths, order = torch.sort(torch.cat([dc, df], -1), -1)
    colors = torch.gather(torch.cat([oc.features, of.features], -1), -1, order.expand(-1, 8, -1, -1))
    sigmas = torch.gather(torch.cat([oc.sigma, of.sigma], -1), -1, order)
    ref, ref_depth, ref_w = composite(colors, sigmas, depths)
    torch.testing.assert_close(fast.features.reshape(2, 8, 64), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.depth.reshape(2, 1, 64), ref_depth)
    torch.testing.assert_close(fast.weight_sum.reshape(2, 1, 64), ref_w.sum(-1))


@pytest.mark.parametrize("compiled", [True, False])
def test_bias_softplus_matches_torch_including_the_linear_tail(compiled_ops, compiled):
    from avatar3d.gan.renderer import bias_softplus

    torch.manual_seed(0)
    h = (torch.randn(2, 5, 37) * 12).requires_grad_(True)  # values beyond +-20: both softplus branches
    b = (torch.randn(5) * 3).requires_grad_(True)
    h_ref, b_ref = h.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    out = bias_softplus(h, b, compiled)
    ref = torch.nn.functional.softplus(h_ref + b_ref.view(1, -1, 1))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-5, atol=1e-5)
