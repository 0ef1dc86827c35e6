"""Project the head's 3D landmarks into a camera and decide which are visible (docs/method.md section 2).

A landmark is visible iff all of these hold:

* in front of the camera (camera z > 0),
* inside the image (0 <= u < size and 0 <= v < size, in pixels),
* front-facing: its surface normal points toward the camera,
  n . (camera - p) > 0,
* not occluded: the first mesh hit of the ray from the camera toward the
  point is no nearer than the point itself, within ``occlusion_tol``.

"Always keep" policy. The paper found "all visible landmarks plus the nose
point" the best guidance: the nose joins the eyes, ears and neck in the
OpenPose skeleton, so dropping it in near-profile views breaks the drawing
apart. Keeping it unconditionally would, however, draw a nose (and thus a
face) on true back views, which is exactly the failure the guidance must
avoid. Our reading: a name in ``always_keep`` skips the occlusion test and
stays visible while it is in the image, in front of the camera and turned
away from the camera by no more than ``keep_margin_deg`` past the
silhouette (n . view_dir >= -sin(margin)). So profiles and slightly-behind
three-quarter views keep the nose; views from behind (more than ~110 deg
off the face with the default 20 deg) drop it. ``keep_joints`` (default:
the shoulders) get the same treatment: they stand for joints inside the
body, which OpenPose reports from every side but the far one, while their
surface point on top of the shoulder slopes away from a level camera on the
far side of a three-quarter view.

Neck. COCO has no neck keypoint: OpenPose's COCO-18 models learnt it as the
midpoint of the two shoulders. With ``neck_from_shoulders`` (default) the
neck is drawn that way whenever both shoulders are visible, which also
gives back views the shoulder-neck-shoulder "T" an OpenPose detector finds
on people seen from behind; otherwise (profiles) the neck's own surface
point (the front of the neck base) decides.

Face gate. OpenPose only runs its face detector on a face box found from
the body's nose plus an eye or an ear (``util.faceDetect`` in
controlnet-aux). With ``face_needs_nose`` (default) face points are drawn
only under the same condition, so back three-quarter views do not get
stray dots of the jaw line or an eye corner seen past the cheek.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar3d.scene.cameras import project_points, split_label
from avatar3d.scene.landmarks import (
    BODY_18_INDEX,
    BODY_NAMES,
    FACE_SLICE,
    LANDMARK_NAMES,
    NUM_BODY_18,
)
from avatar3d.scene.render import check_size

DEFAULT_ALWAYS_KEEP = ("nose",)
DEFAULT_KEEP_JOINTS = ("right_shoulder", "left_shoulder")
DEFAULT_KEEP_MARGIN_DEG = 20.0
DEFAULT_OCCLUSION_TOL = 0.006  # world units (~3.4 mm on the canonical head, about one marching-cubes voxel)


@dataclass(frozen=True)
class ProjectedLandmarks:
    """The 78 landmarks in one image; pixel coordinates x right / y down, origin at the top-left corner
    (pixel i spans [i, i + 1), so its centre is i + 0.5)."""

    uv: np.ndarray  # (78, 2) float64 pixels
    depth: np.ndarray  # (78,) camera z
    visible: np.ndarray  # (78,) bool: what gets drawn (after the always_keep policy)
    in_image: np.ndarray  # (78,) bool
    front_facing: np.ndarray  # (78,) bool
    unoccluded: np.ndarray  # (78,) bool
    size: int
    names: tuple = LANDMARK_NAMES

    def is_visible(self, name: str) -> bool:
        return bool(self.visible[self.names.index(name)])

    @property
    def face_visible(self) -> np.ndarray:
        """(70,) visibility of the OpenPose face points."""
        return self.visible[FACE_SLICE]

    def body18(self):
        """18 entries in OpenPose BODY_18 order: (x, y) normalised to [0, 1], or None when not drawn."""
        out = [None] * NUM_BODY_18
        for i, name in enumerate(BODY_NAMES):
            if self.visible[i]:
                out[BODY_18_INDEX[name]] = tuple(self.uv[i] / self.size)
        return out

    def face70(self):
        """70 entries in OpenPose face order: (x, y) normalised to [0, 1], or None when not drawn."""
        uv = self.uv[FACE_SLICE] / self.size
        return [tuple(p) if v else None for p, v in zip(uv, self.face_visible)]


def project_landmarks(
    head,
    label,
    size: int,
    always_keep=DEFAULT_ALWAYS_KEEP,
    keep_joints=DEFAULT_KEEP_JOINTS,
    keep_margin_deg: float = DEFAULT_KEEP_MARGIN_DEG,
    occlusion_tol: float = DEFAULT_OCCLUSION_TOL,
    neck_from_shoulders: bool = True,
    face_needs_nose: bool = True,
) -> ProjectedLandmarks:
    """Project ``head.landmarks`` with ``label`` into a size x size image and test visibility."""
    size = check_size(size)
    always_keep, keep_joints = tuple(always_keep), tuple(keep_joints)
    unknown = [n for n in always_keep + keep_joints if n not in LANDMARK_NAMES]
    if unknown:
        raise ValueError(f"always_keep/keep_joints: unknown landmark {unknown[0]!r}; pass names from {', '.join(BODY_NAMES)} or face_00..face_69")
    c2w, _ = split_label(label)
    cam = c2w[:3, 3]
    p = head.landmarks.positions
    n = head.landmarks.normals
    uv, z = project_points(p, label, size)
    in_front = z > 1e-9
    in_image = in_front & np.all((uv >= 0.0) & (uv < size), axis=1)

    to_cam = cam - p
    dist = np.linalg.norm(to_cam, axis=1)
    cos_view = np.einsum("ij,ij->i", n, to_cam) / dist
    front_facing = cos_view > 0.0

    hits = head.cast(np.broadcast_to(cam, p.shape), -to_cam)
    unoccluded = hits.distance >= dist - occlusion_tol

    visible = in_image & front_facing & unoccluded
    keep = np.isin(np.array(LANDMARK_NAMES), list(always_keep + keep_joints))
    kept = keep & in_image & (cos_view >= -np.sin(np.radians(keep_margin_deg)))
    visible = visible | kept
    if neck_from_shoulders:
        neck, rs, ls = (LANDMARK_NAMES.index(k) for k in ("neck", "right_shoulder", "left_shoulder"))
        if visible[rs] and visible[ls]:
            uv, z, visible = uv.copy(), z.copy(), visible.copy()
            uv[neck] = 0.5 * (uv[rs] + uv[ls])
            z[neck] = 0.5 * (z[rs] + z[ls])
            visible[neck] = True
    if face_needs_nose:
        has = {name: visible[LANDMARK_NAMES.index(name)] for name in BODY_NAMES}
        if not (has["nose"] and (has["right_eye"] or has["left_eye"] or has["right_ear"] or has["left_ear"])):
            visible = visible.copy()
            visible[FACE_SLICE] = False
    return ProjectedLandmarks(
        uv=uv, depth=z, visible=visible, in_image=in_image,
        front_facing=front_facing, unoccluded=unoccluded, size=size,
    )
