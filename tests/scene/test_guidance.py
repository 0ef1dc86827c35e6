"""Guidance images of the canonical head: visibility, depth, normals, OpenPose drawing, files."""
import io

import numpy as np
import pytest
import torch

from avatar3d.scene.cameras import camera_label, camera_rays, project_points
from avatar3d.scene.guidance import (
    contact_sheet,
    draw_openpose,
    evenly_spaced_yaws,
    render_guidance,
    write_guidance_views,
)
from avatar3d.scene.head import canonical_head, head_sdf_world
from avatar3d.scene.landmarks import LANDMARK_NAMES
from avatar3d.scene.render import depth_to_image, pixel_rays, render_mesh
from avatar3d.scene.visibility import project_landmarks

torch.set_num_threads(1)

EYES_EARS = ("right_eye", "left_eye", "right_ear", "left_ear")


@pytest.fixture(scope="module")
def head():
    return canonical_head()


def visible_names(keypoints, names):
    return {n for n in names if keypoints.is_visible(n)}


def test_pixel_rays_are_camera_rays():
    label = camera_label(37.0, -12.0)
    rays = pixel_rays(label, 9)
    o, d = camera_rays(torch.from_numpy(label[None]), 9)
    assert np.allclose(rays.origins, o[0].numpy(), atol=1e-12)
    assert np.allclose(rays.directions, d[0].numpy(), atol=1e-12)


def test_front_view_shows_every_landmark(head):
    kp = project_landmarks(head, camera_label(0.0, 0.0), 128)
    assert kp.face_visible.all()
    assert kp.visible[: len(kp.visible) - 70].all()


def test_back_view_shows_no_face(head):
    kp = project_landmarks(head, camera_label(180.0, 0.0), 128)
    assert not kp.face_visible.any()
    assert not visible_names(kp, ("nose",) + EYES_EARS)
    # A person seen from behind still has shoulders, and the neck between them.
    assert visible_names(kp, ("neck", "right_shoulder", "left_shoulder")) == {"neck", "right_shoulder", "left_shoulder"}


@pytest.mark.parametrize("yaw, side", [(90.0, "left"), (-90.0, "right")])
def test_profile_shows_exactly_the_near_eye_and_ear(head, yaw, side):
    # yaw +90 puts the camera at +x, on the subject's left.
    kp = project_landmarks(head, camera_label(yaw, 0.0), 128)
    assert visible_names(kp, EYES_EARS) == {f"{side}_eye", f"{side}_ear"}
    assert kp.is_visible("nose")
    # Roughly half the face points: the near side and the midline.
    assert 15 <= kp.face_visible.sum() <= 45


@pytest.mark.parametrize("yaw, hidden, seen", [(45.0, ("face_39", "face_31"), ("face_42", "face_35")),
                                               (-45.0, ("face_42", "face_35"), ("face_39", "face_31"))])
def test_nose_hides_the_far_eye_corner_and_nostril(head, yaw, hidden, seen):
    # Three-quarter view: the far inner eye corner and far nostril face the camera but sit behind the nose.
    kp = project_landmarks(head, camera_label(yaw, 0.0), 128)
    for name in hidden:
        i = LANDMARK_NAMES.index(name)
        assert kp.in_image[i] and kp.front_facing[i] and not kp.unoccluded[i] and not kp.visible[i], name
    assert all(kp.is_visible(name) for name in seen)


def test_nose_policy_keeps_it_past_the_silhouette_but_not_from_behind(head):
    label = camera_label(100.0, 0.0)
    nose = LANDMARK_NAMES.index("nose")
    default = project_landmarks(head, label, 128)
    strict = project_landmarks(head, label, 128, always_keep=())
    assert not strict.front_facing[nose]  # just past the profile the nose tip turns away...
    assert default.is_visible("nose") and not strict.is_visible("nose")  # ...and the policy keeps it
    for yaw in (150.0, 180.0, -150.0):
        assert not project_landmarks(head, camera_label(yaw, 0.0), 128).is_visible("nose")
    with pytest.raises(ValueError, match="unknown landmark 'nostril'"):
        project_landmarks(head, label, 64, always_keep=("nostril",))


def test_landmarks_outside_the_image_are_not_visible(head):
    # Zoomed in far enough that the shoulders leave the frame.
    label = camera_label(0.0, 0.0, focal=12.0)
    kp = project_landmarks(head, label, 64)
    assert not kp.in_image[LANDMARK_NAMES.index("left_shoulder")]
    assert not kp.is_visible("left_shoulder") and not kp.is_visible("right_shoulder")
    assert kp.is_visible("nose")


def first_hit_brute_force(mesh, origin, direction):
    """Moller-Trumbore against all triangles at once: distance along ``direction`` to the first hit."""
    tri = np.asarray(mesh.triangles, dtype=np.float64)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-14
    inv = 1.0 / np.where(ok, det, 1.0)
    s = origin - tri[:, 0]
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    return float(t[hit].min())


def test_depth_at_the_image_centre_is_the_distance_to_the_surface(head):
    size = 65  # odd: the centre pixel's ray is the optical axis
    for yaw, pitch in ((0.0, 0.0), (90.0, 10.0), (180.0, -20.0)):
        label = camera_label(yaw, pitch)
        depth = render_mesh(head, label, size).depth
        c2w = label[:16].reshape(4, 4)
        cam, fwd = c2w[:3, 3], c2w[:3, 2]
        # Independent check 1: brute-force ray/triangle intersection over every triangle (not embree).
        assert depth[32, 32] == pytest.approx(first_hit_brute_force(head.mesh, cam, fwd), abs=1e-6)
        # Off the axis, depth is z-depth (along the viewing axis), not the distance along the ray.
        d = pixel_rays(label, size).directions[20 * size + 27]  # row 20, column 27
        assert depth[20, 27] == pytest.approx(first_hit_brute_force(head.mesh, cam, d) * float(d @ fwd), abs=1e-6)
        # Independent check 2: where the analytic signed distance field crosses zero on that ray.
        t = np.linspace(1.5, 3.5, 20001)
        sdf = head_sdf_world(cam + t[:, None] * fwd)
        t_surface = t[np.argmax(sdf < 0)]
        assert depth[32, 32] == pytest.approx(t_surface, abs=0.004)  # marching cubes is within a voxel


def test_depth_at_landmark_pixels_matches_their_camera_depth(head):
    size = 128
    label = camera_label(20.0, 5.0)
    depth = render_mesh(head, label, size).depth
    kp = project_landmarks(head, label, size)
    uv, z = project_points(head.landmarks.positions, label, size)
    cols, rows = np.floor(uv).astype(int).T
    # Landmarks that pass the geometric tests themselves (not kept by policy, not the derived neck).
    vis = np.flatnonzero(kp.in_image & kp.front_facing & kp.unoccluded)
    assert len(vis) > 50
    # Best match in the 3x3 pixels around each landmark: on a silhouette the nearest centre may miss.
    padded = np.pad(depth, 1, constant_values=np.inf)
    err = np.min([np.abs(padded[rows[vis] + 1 + dr, cols[vis] + 1 + dc] - z[vis])
                  for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)
    assert np.median(err) < 0.004 and err.max() < 0.03


def test_depth_image_is_inverse_depth_with_black_background(head):
    label = camera_label(0.0, 0.0)
    g = render_guidance(label, 96, head=head, kinds=("depth",))
    img = np.asarray(g.depth)
    assert img.shape == (96, 96, 3) and np.array_equal(img[..., 0], img[..., 2])
    bg = ~np.isfinite(g.depth_metric)
    assert bg.any() and (img[bg] == 0).all() and (img[~bg] > 0).all()
    # Nearest surface pixel is white, and nearer means brighter.
    fg = np.flatnonzero(~bg.reshape(-1))
    d = g.depth_metric.reshape(-1)[fg]
    v = img[..., 0].reshape(-1)[fg].astype(int)
    assert v[np.argmin(d)] == 255
    assert np.corrcoef(1.0 / d, v)[0, 1] > 0.99
    kp = g.keypoints
    uv = np.floor(kp.uv).astype(int)
    nose, ear = LANDMARK_NAMES.index("nose"), LANDMARK_NAMES.index("left_ear")
    assert img[uv[nose, 1], uv[nose, 0], 0] > img[uv[ear, 1], uv[ear, 0], 0]
    with pytest.raises(ValueError, match="floor"):
        depth_to_image(g.depth_metric, floor=1.5)


def test_normal_image_colours(head):
    g = render_guidance(camera_label(0.0, 0.0), 96, head=head, kinds=("normal",))
    img = np.asarray(g.normal).astype(int)
    assert g.openpose is None and g.depth is None and g.depth_metric is not None
    row = img[40]  # through the cranium: the head's image-left edge faces left, its right edge faces right
    cols = np.flatnonzero(row.any(axis=1))
    assert row[cols[0], 0] > 200 and row[cols[-1], 0] < 60  # R = pointing image-left
    top = np.flatnonzero(img[:, 48].any(axis=1))[0]
    assert img[top + 1, 48, 1] > 200  # G = pointing up at the crown
    nose = np.floor(g.keypoints.uv[LANDMARK_NAMES.index("nose")]).astype(int)
    assert img[nose[1], nose[0], 2] > 240  # B = facing the viewer
    assert (img[~np.isfinite(g.depth_metric)] == 0).all()


def test_openpose_image_draws_visible_points_only(head):
    size = 128
    front = render_guidance(camera_label(0.0, 0.0), size, head=head, kinds=("openpose",))
    pose = np.asarray(front.openpose)
    for i in np.flatnonzero(front.keypoints.visible):
        u, v = np.floor(front.keypoints.uv[i]).astype(int)
        assert pose[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2].any(), LANDMARK_NAMES[i]
    white = (pose == 255).all(axis=-1)  # face dots are white; no body colour is
    assert white.sum() > 70
    back = render_guidance(camera_label(180.0, 0.0), size, head=head, kinds=("openpose",))
    back_pose = np.asarray(back.openpose)
    assert not (back_pose == 255).all(axis=-1).any()
    assert back_pose.any()  # the shoulders are still drawn
    # Left shoulder: controlnet-aux colour of BODY_18 index 5 at its keypoint; from behind it is on image-left.
    ls = np.floor(back.keypoints.uv[LANDMARK_NAMES.index("left_shoulder")]).astype(int)
    rs = np.floor(back.keypoints.uv[LANDMARK_NAMES.index("right_shoulder")]).astype(int)
    assert ls[0] < size / 2 < rs[0]
    assert tuple(back_pose[ls[1], ls[0]]) == (85, 255, 0) and tuple(back_pose[rs[1], rs[0]]) == (255, 170, 0)


def test_draw_openpose_with_nothing_visible_is_black(head):
    kp = project_landmarks(head, camera_label(0.0, 0.0, pivot=(5.0, 0.0, 0.0)), 64)  # looking away from the head
    assert not kp.visible.any()
    assert not np.asarray(draw_openpose(kp)).any()


def test_head_fills_the_frame_like_a_portrait(head):
    for yaw in evenly_spaced_yaws(8):
        mask = np.isfinite(render_mesh(head, camera_label(yaw, 0.0), 64).depth)
        rows = np.flatnonzero(mask.any(axis=1))
        assert 2 <= rows[0] <= 12  # the crown is inside the frame, near the top
        assert rows[-1] == 63  # the shoulders run out of the bottom
        assert 0.3 < mask.mean() < 0.75


def png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_guidance_is_deterministic(head):
    label = camera_label(-30.0, 12.0)
    a = render_guidance(label, 64, head=head, kinds=("openpose", "depth", "normal"))
    b = render_guidance(label, 64, head=head, kinds=("openpose", "depth", "normal"))
    for kind in ("openpose", "depth", "normal", "hybrid"):
        assert png_bytes(getattr(a, kind)) == png_bytes(getattr(b, kind))
    assert np.array_equal(a.depth_metric, b.depth_metric)


def test_hybrid_is_the_skeleton_over_the_depth(head):
    g = render_guidance(camera_label(0.0, 0.0), 64, head=head)
    pose, depth, hybrid = (np.asarray(x) for x in (g.openpose, g.depth, g.hybrid))
    drawn = pose.any(axis=-1)
    assert np.array_equal(hybrid[drawn], pose[drawn]) and np.array_equal(hybrid[~drawn], depth[~drawn])
    with pytest.raises(ValueError, match="hybrid needs"):
        render_guidance(camera_label(0.0, 0.0), 32, head=head, kinds=("depth",)).hybrid


def test_render_guidance_validates_its_inputs(head):
    label = camera_label(0.0, 0.0)
    with pytest.raises(ValueError, match="kinds"):
        render_guidance(label, 32, head=head, kinds=("canny",))
    with pytest.raises(ValueError, match="size"):
        render_guidance(label, 0, head=head)
    with pytest.raises(ValueError, match="25 finite floats"):
        render_guidance(label[:16], 32, head=head)
    with pytest.raises(ValueError, match="25 finite floats"):
        render_guidance(np.full(25, np.nan), 32, head=head)


def test_write_guidance_views_writes_every_kind_and_a_contact_sheet(tmp_path, head):
    paths = write_guidance_views(tmp_path / "views", views=4, size=48, head=head)
    assert len(paths) == 4 * 4 + 1 and all(p.is_file() for p in paths)
    assert paths[-1].name == "contact_sheet.png"
    assert {p.name for p in paths[:4]} == {f"yaw-180_{k}.png" for k in ("openpose", "depth", "normal", "hybrid")}
    from PIL import Image

    sheet = Image.open(paths[-1])
    assert sheet.width > 4 * 48 and sheet.height > 4 * 48
    again = write_guidance_views(tmp_path / "again", views=4, size=48, head=head)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_evenly_spaced_yaws():
    assert evenly_spaced_yaws(8).tolist() == [-180.0, -135.0, -90.0, -45.0, 0.0, 45.0, 90.0, 135.0]
    with pytest.raises(ValueError, match="views"):
        evenly_spaced_yaws(0)


def test_contact_sheet_layout_and_validation():
    from PIL import Image

    tiles = [[Image.new("RGB", (10, 8), (i * 40, j * 40, 0)) for j in range(3)] for i in range(2)]
    sheet = contact_sheet(tiles, labels=["a", "b", "c"], pad=2, caption_height=12)
    assert sheet.size == (3 * 12 + 2, 12 + 2 * 10 + 2)
    assert sheet.getpixel((2 + 12 * 2, 12 + 2 + 10)) == (40, 80, 0)  # row 1, column 2
    with pytest.raises(ValueError, match="column labels"):
        contact_sheet(tiles, labels=["a"])
    with pytest.raises(ValueError, match="every row"):
        contact_sheet([tiles[0], tiles[1][:2]])
