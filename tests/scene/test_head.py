"""The canonical head mesh, its landmarks, and loading a user's head."""
import json

import numpy as np
import pytest
from avatar3d.scene.head import (
    HEAD_OFFSET,
    build_procedural_mesh,
    canonical_head,
    closest_surface_points,
    head_sdf_world,
    load_head,
    sample_sdf_grid,
)
from avatar3d.scene.landmarks import (
    BODY_18_INDEX,
    BODY_NAMES,
    LANDMARK_NAMES,
    NUM_LANDMARKS,
    load_landmarks,
    parse_landmarks,
    save_landmarks,
)


@pytest.fixture(scope="module")
def head():
    return canonical_head()


@pytest.fixture(scope="module")
def small_head():
    # A coarse head keeps the file round trips fast; the geometry code is the same.
    return canonical_head(64)


def test_landmark_layout_follows_openpose():
    assert NUM_LANDMARKS == 78 and len(set(LANDMARK_NAMES)) == 78
    assert [BODY_18_INDEX[n] for n in BODY_NAMES] == sorted(BODY_18_INDEX.values())
    assert BODY_18_INDEX["nose"] == 0 and BODY_18_INDEX["neck"] == 1
    assert (BODY_18_INDEX["right_eye"], BODY_18_INDEX["left_ear"]) == (14, 17)


def test_mesh_is_closed_outward_and_inside_eg3d_box(head):
    mesh = head.mesh
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward-facing triangles
    assert np.all(np.abs(mesh.bounds) <= 0.5)
    # It fills the box well: a head is ~0.4 units tall at 1.75 units per metre.
    assert mesh.extents[1] > 0.6 and mesh.extents[2] > 0.3


def test_mesh_is_left_right_symmetric(head):
    verts = head.mesh.vertices
    mirrored = verts * np.array([-1.0, 1.0, 1.0])
    _, dist, _ = closest_surface_points(head.mesh, mirrored[::97])
    assert dist.max() < 1e-6


def test_banded_sdf_sampling_matches_full_evaluation_near_the_surface():
    res = 48
    banded = sample_sdf_grid(res)
    axis = np.linspace(-0.5, 0.5, res)
    full = head_sdf_world(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)).reshape(banded.shape)
    assert np.array_equal(np.sign(banded), np.sign(full))
    near = np.abs(full) < 2.0 / (res - 1)
    assert np.array_equal(banded[near], full[near])


def test_landmarks_lie_on_the_surface_with_outward_normals(head):
    pos, nrm = head.landmarks.positions, head.landmarks.normals
    _, dist, tri = closest_surface_points(head.mesh, pos)
    assert dist.max() < 1e-6  # ~1 mm is 0.00175 world units; these are exact ray hits
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0)
    # The interpolated normal agrees with the face normal there.
    assert np.min(np.einsum("ij,ij->i", nrm, head.mesh.face_normals[tri])) > 0.5


def test_landmarks_respect_the_subjects_left_and_right(head):
    lm = head.landmarks
    for side, sign in (("left", 1.0), ("right", -1.0)):
        for part in ("eye", "ear", "shoulder"):
            assert sign * lm[f"{side}_{part}"][0] > 0.02
    assert lm["face_00"][0] < 0 < lm["face_16"][0]  # iBUG jaw starts at the subject's right
    assert lm["face_36"][0] < lm["face_39"][0] < 0 < lm["face_42"][0] < lm["face_45"][0]
    assert lm["face_68"][0] < 0 < lm["face_69"][0]
    # Vertical order: brows above eyes above nose tip above mouth above chin; nose tip most forward.
    y = {n: lm[n][1] for n in ("face_19", "face_37", "face_30", "face_51", "face_57", "face_08")}
    assert y["face_19"] > y["face_37"] > y["face_30"] > y["face_51"] > y["face_57"] > y["face_08"]
    face_z = lm.positions[len(BODY_NAMES):, 2]
    assert lm["face_30"][2] == face_z.max()
    assert np.allclose(lm["nose"], lm["face_30"])
    # Eyes sit at the height the module documents (HEAD_OFFSET marks eye level).
    assert abs(lm["face_68"][1] - HEAD_OFFSET[1]) < 0.01


def test_resolution_too_coarse_is_refused():
    with pytest.raises(ValueError, match="resolution"):
        build_procedural_mesh(16)


def test_user_mesh_and_landmark_file_round_trip(tmp_path, small_head):
    mesh_path = tmp_path / "head.ply"
    small_head.mesh.export(mesh_path)
    lm_path = save_landmarks(tmp_path / "landmarks.json", small_head.landmarks.positions)
    user = load_head(mesh_path, lm_path)
    assert len(user.mesh.faces) == len(small_head.mesh.faces)
    assert np.allclose(user.landmarks.positions, small_head.landmarks.positions, atol=1e-5)
    assert np.min(np.einsum("ij,ij->i", user.landmarks.normals, small_head.landmarks.normals)) > 0.9
    # The list form, in documented order, reads the same.
    list_path = tmp_path / "list.json"
    list_path.write_text(json.dumps(small_head.landmarks.positions.tolist()))
    assert np.array_equal(load_landmarks(list_path), load_landmarks(lm_path))


def test_user_landmarks_off_the_surface_are_snapped_or_refused(tmp_path, small_head):
    mesh_path = tmp_path / "head.obj"
    small_head.mesh.export(mesh_path)
    pos = small_head.landmarks.positions.copy()
    pos += 0.002 * small_head.landmarks.normals  # 1 mm outside: snapped back onto the surface
    user = load_head(mesh_path, save_landmarks(tmp_path / "near.json", pos))
    _, dist, _ = closest_surface_points(user.mesh, user.landmarks.positions)
    assert dist.max() < 1e-6
    pos[LANDMARK_NAMES.index("left_ear")] += np.array([0.3, 0.0, 0.0])
    with pytest.raises(ValueError, match="left_ear"):
        load_head(mesh_path, save_landmarks(tmp_path / "far.json", pos))


def test_landmark_file_validation(tmp_path):
    good = {n: [0.0, 0.0, 0.0] for n in LANDMARK_NAMES}
    with pytest.raises(ValueError, match="not found"):
        load_landmarks(tmp_path / "nope.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_landmarks(bad_json)
    with pytest.raises(ValueError, match="expected a list of 78"):
        parse_landmarks([[0, 0, 0]] * 77)
    missing = dict(good)
    del missing["neck"]
    with pytest.raises(ValueError, match="missing landmark 'neck'"):
        parse_landmarks(missing)
    with pytest.raises(ValueError, match="unknown landmark name 'chin'"):
        parse_landmarks({**good, "chin": [0, 0, 0]})
    with pytest.raises(ValueError, match=r"'face_05' must be \[x, y, z\]"):
        parse_landmarks({**good, "face_05": [0, 0]})
    nan_file = tmp_path / "nan.json"
    nan_file.write_text(json.dumps({**good, "left_eye": [0.0, float("nan"), 0.0]}))  # json writes NaN
    with pytest.raises(ValueError, match="'left_eye' has a non-finite value"):
        load_landmarks(nan_file)
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_landmarks("nose")


def test_user_mesh_validation(tmp_path, small_head):
    lm_path = save_landmarks(tmp_path / "lm.json", small_head.landmarks.positions)
    with pytest.raises(ValueError, match="mesh file not found"):
        load_head(tmp_path / "missing.ply", lm_path)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"this is not a mesh")
    with pytest.raises(ValueError, match="mesh file"):
        load_head(junk, lm_path)
    mesh_path = tmp_path / "head.ply"
    small_head.mesh.export(mesh_path)
    with pytest.raises(ValueError, match="landmarks file not found"):
        load_head(mesh_path, tmp_path / "missing.json")
