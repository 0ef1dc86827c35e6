"""Mesh extraction: analytic fields give closed meshes of the right volume, place and orientation;
exports reload with their colours; the generator path colours vertices from the decoder."""
import numpy as np
import pytest
import torch
import trimesh

from avatar3d.evaluation.mesh import (colors_to_rgba, export_mesh, extract_mesh, generator_mesh, marching_cubes,
                                      mesh_bytes, postprocess, preview_image, seed_latent, srgb_to_linear_u8)
from tests.evaluation.helpers import micro_generator, surface_iso

torch.set_num_threads(1)


def sphere_density(radius, centre=(0.0, 0.0, 0.0)):
    """Higher inside, like the generator's sigma: a smooth falloff crossing 0 at the radius."""
    return lambda p: 5.0 * (radius - np.linalg.norm(p - np.asarray(centre), axis=1))


def test_sphere_is_watertight_with_the_true_volume():
    r = 0.3
    mesh = extract_mesh(sphere_density(r), resolution=96, half_extent=0.5, iso=0.0)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0  # outward faces
    assert tm.volume == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.01)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - r).max() < 0.01  # vertices on the sphere: voxel -> world scale is right
    # Outward normals: every face normal points away from the centre.
    centres = tm.triangles_center
    assert ((tm.face_normals * centres).sum(1) > 0).all()


def test_ellipsoid_keeps_axes_position_and_an_iso_level_other_than_zero():
    radii, centre = np.array([0.35, 0.2, 0.1]), np.array([0.1, -0.05, 0.02])

    def field(p):  # = 1 on the surface, larger inside
        return 2.0 - np.sqrt((((p - centre) / radii) ** 2).sum(1))

    mesh = extract_mesh(field, resolution=80, half_extent=0.5, iso=1.0)
    tm = mesh.to_trimesh()
    assert tm.is_watertight
    np.testing.assert_allclose(tm.bounds, [centre - radii, centre + radii], atol=0.01)
    assert tm.volume == pytest.approx(4 / 3 * np.pi * radii.prod(), rel=0.02)


def test_a_surface_reaching_the_box_is_closed_by_the_padding():
    mesh = extract_mesh(lambda p: 0.7 - np.abs(p).max(1), resolution=24, half_extent=0.5, iso=0.0)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.volume == pytest.approx(1.0, rel=1e-3)  # the whole box is inside


def test_no_surface_at_the_iso_level_is_a_clear_error():
    with pytest.raises(ValueError, match=r"iso: no surface at level 2.*field spans"):
        extract_mesh(sphere_density(0.2), resolution=16, half_extent=0.5, iso=2.0)
    with pytest.raises(ValueError, match="resolution"):
        extract_mesh(sphere_density(0.2), resolution=2, half_extent=0.5, iso=0.0)


def test_smoothing_and_decimation_keep_the_shape():
    mesh = marching_cubes(np.asarray(extract_mesh.__globals__["sample_grid"](sphere_density(0.3), 64, 0.5)),
                          0.0, 0.5)
    small = postprocess(mesh, smooth_iterations=5, target_faces=1000)
    tm = small.to_trimesh()
    assert len(tm.faces) <= 1100 and len(tm.faces) < len(mesh.faces) / 4
    assert tm.volume == pytest.approx(mesh.to_trimesh().volume, rel=0.03)


@pytest.mark.parametrize("fmt", ["ply", "obj", "glb"])
def test_exports_reload_with_vertex_colours(tmp_path, fmt):
    mesh = extract_mesh(sphere_density(0.3), resolution=32, half_extent=0.5, iso=0.0)
    mesh.colors = colors_to_rgba(np.clip(mesh.vertices / 0.6 + 0.5, 0, 1))  # colour = position, all distinct
    path = export_mesh(mesh, tmp_path / f"avatar.{fmt}")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == len(mesh.vertices) and len(loaded.faces) == len(mesh.faces)
    # Match vertices by position (a format may reorder) and compare their colours.
    order = np.lexsort(mesh.vertices.T)
    order_loaded = np.lexsort(np.asarray(loaded.vertices).T)
    np.testing.assert_allclose(np.asarray(loaded.vertices)[order_loaded], mesh.vertices[order], atol=1e-5)
    # glTF stores vertex colours as linear light (viewers encode them to sRGB for display); PLY / OBJ as given.
    expected = srgb_to_linear_u8(mesh.colors[:, :3]) if fmt == "glb" else mesh.colors[:, :3]
    np.testing.assert_array_equal(np.asarray(loaded.visual.vertex_colors)[order_loaded, :3], expected[order])
    assert loaded.volume == pytest.approx(mesh.to_trimesh().volume, rel=1e-4)
    assert mesh_bytes(mesh, fmt)[:4] == path.read_bytes()[:4]


def test_srgb_to_linear_follows_the_srgb_transfer_function():
    values = srgb_to_linear_u8(np.array([[0, 10, 128], [188, 255, 54]], np.uint8))
    # 10/255 is on the linear toe (/12.92); 128 -> 0.2158, 188 -> 0.5029, 54 -> 0.0368 of full scale
    np.testing.assert_array_equal(values, [[0, 1, 55], [128, 255, 9]])


def test_generator_mesh_is_closed_and_coloured_by_the_decoder():
    G = micro_generator()
    ws = seed_latent(G, 0)
    iso = surface_iso(G)
    mesh = generator_mesh(G, ws, resolution=24, iso=iso)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.volume > 0
    assert (np.abs(mesh.vertices) <= G.cfg.box_warp / 2 + 1e-5).all()  # inside the box, caps included
    # The colour of a vertex is the decoder's colour there.
    with torch.no_grad():
        planes = G.synthesize_planes(ws, noise_mode="const")
        pts = torch.tensor(mesh.vertices[:50], dtype=torch.float32)[None]
        sample = G.sample_density(planes, pts)
    np.testing.assert_array_equal(mesh.colors[:50], colors_to_rgba(sample.rgb[0].numpy()))
    # Away from the box faces (where the padding caps the surface), vertices lie where sigma == iso
    # (linear interpolation on the grid: close, not exact).
    inner = mesh.vertices[(np.abs(mesh.vertices) < 0.5 - 2 / 23).all(1)]
    assert len(inner) > 100
    with torch.no_grad():
        sigma = G.sample_density(planes, torch.tensor(inner, dtype=torch.float32)[None]).sigma[0, :, 0].numpy()
        anywhere = G.sample_density(planes, torch.rand(1, 2000, 3) - 0.5).sigma.numpy()
    assert np.abs(sigma - iso).mean() < 0.1 * np.abs(anywhere - iso).mean()
    with pytest.raises(ValueError, match="iso"):
        generator_mesh(G, ws, resolution=16, iso=10.0)  # an untrained field never reaches EG3D's level


def test_preview_shows_the_mesh_in_front_of_a_black_background():
    mesh = extract_mesh(sphere_density(0.3), resolution=32, half_extent=0.5, iso=0.0)
    mesh.colors = colors_to_rgba(np.tile([[1.0, 0.0, 0.0]], (len(mesh.vertices), 1)))
    img = preview_image(mesh, size=48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert (img[0, 0] == 0).all() and (img[-1, -1] == 0).all()
    centre = img[24, 24]
    assert centre[0] > 200 and centre[1] == 0 and centre[2] == 0  # red, lit head-on
