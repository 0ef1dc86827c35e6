"""ControlNet guidance images of the canonical head for any camera (docs/method.md section 2).

For a 25-float camera label this renders

* ``openpose``: the visible landmarks (``avatar3d.scene.visibility``) drawn
  by controlnet-aux's own OpenPose painter (``draw_poses``), so colours, limb
  widths and the face dots are exactly what ControlNet's openpose models
  were trained on;
* ``depth``: MiDaS-style inverse depth (near bright, background black), plus
  the metric z-depth array it comes from;
* ``normal``: camera-space normals in sd-controlnet-normal colours.

Hybrid guidance (the paper's best) is the pair (openpose, depth) fed to two
ControlNets at once; :attr:`Guidance.hybrid` also draws the skeleton over the
depth image for people to look at. Everything is deterministic: the same
label and size give the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avatar3d.scene.cameras import camera_label, wrap_degrees
from avatar3d.scene.head import canonical_head
from avatar3d.scene.render import check_size, depth_to_image, normal_to_image, render_mesh
from avatar3d.scene.visibility import (
    DEFAULT_ALWAYS_KEEP,
    DEFAULT_KEEP_JOINTS,
    DEFAULT_KEEP_MARGIN_DEG,
    ProjectedLandmarks,
    project_landmarks,
)

KINDS = ("openpose", "depth", "normal")


@dataclass(frozen=True)
class Guidance:
    """Guidance images for one camera; kinds not asked for are None."""

    openpose: object | None  # PIL.Image RGB
    depth: object | None  # PIL.Image RGB, MiDaS-style inverse depth
    normal: object | None  # PIL.Image RGB
    depth_metric: np.ndarray | None  # (S, S) float32 camera z-depth, +inf on the background
    keypoints: ProjectedLandmarks
    label: np.ndarray  # (25,)
    size: int

    @property
    def hybrid(self):
        """The skeleton painted over the depth image (for viewing; the ControlNets take the two apart)."""
        if self.openpose is None or self.depth is None:
            raise ValueError("hybrid needs kinds to include both 'openpose' and 'depth'")
        pose = np.asarray(self.openpose)
        out = np.asarray(self.depth).copy()
        drawn = pose.any(axis=-1)
        out[drawn] = pose[drawn]
        return Image.fromarray(out)


def draw_openpose(keypoints: ProjectedLandmarks):
    """Visible landmarks -> OpenPose image (RGB, black background) with controlnet-aux's painter."""
    # controlnet-aux's package import pulls in every detector (~5 s): import only when drawing.
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult, draw_poses

    body = [None if p is None else Keypoint(float(p[0]), float(p[1])) for p in keypoints.body18()]
    # draw_facepose cannot take None entries: pass the visible points only.
    face = [Keypoint(float(p[0]), float(p[1])) for p in keypoints.face70() if p is not None]
    pose = PoseResult(
        body=BodyResult(keypoints=body, total_score=float(sum(p is not None for p in body)), total_parts=sum(p is not None for p in body)),
        left_hand=None,
        right_hand=None,
        face=face or None,
    )
    canvas = draw_poses([pose], keypoints.size, keypoints.size, draw_body=True, draw_hand=False, draw_face=True)
    return Image.fromarray(canvas)


def _check_kinds(kinds) -> tuple:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds: unknown guidance kind {bad[0] if bad else kinds!r}; pass a non-empty subset of {KINDS}")
    return kinds


def render_guidance(
    label,
    size: int,
    head=None,
    kinds=("openpose", "depth"),
    always_keep=DEFAULT_ALWAYS_KEEP,
    keep_joints=DEFAULT_KEEP_JOINTS,
    keep_margin_deg: float = DEFAULT_KEEP_MARGIN_DEG,
    depth_floor: float = 0.2,
    neck_from_shoulders: bool = True,
    face_needs_nose: bool = True,
) -> Guidance:
    """Guidance for one camera ``label`` (25 floats) at size x size; ``head`` defaults to the canonical head."""
    size = check_size(size)
    kinds = _check_kinds(kinds)
    label = np.asarray(label, dtype=np.float64).reshape(-1)
    if label.shape != (25,) or not np.isfinite(label).all():
        raise ValueError(f"label must be 25 finite floats (cam2world 16 + intrinsics 9), got shape {label.shape}")
    head = canonical_head() if head is None else head
    keypoints = project_landmarks(head, label, size, always_keep=always_keep, keep_joints=keep_joints,
                                  keep_margin_deg=keep_margin_deg,
                                  neck_from_shoulders=neck_from_shoulders, face_needs_nose=face_needs_nose)
    openpose = draw_openpose(keypoints) if "openpose" in kinds else None
    depth = normal = depth_metric = None
    if "depth" in kinds or "normal" in kinds:
        render = render_mesh(head, label, size)
        depth_metric = render.depth
        if "depth" in kinds:
            depth = depth_to_image(render.depth, floor=depth_floor)
        if "normal" in kinds:
            normal = normal_to_image(render.normal, render.mask)
    return Guidance(openpose=openpose, depth=depth, normal=normal, depth_metric=depth_metric,
                    keypoints=keypoints, label=label, size=size)


def contact_sheet(rows_of_images, labels=None, row_labels=None, pad: int = 4, caption_height: int = 16):
    """Grid of images (rows of equal-size PIL images) with a caption above each column and before each row."""
    rows = [list(r) for r in rows_of_images]
    if not rows or not rows[0]:
        raise ValueError("rows_of_images must be a non-empty list of non-empty rows of PIL images")
    ncols = len(rows[0])
    if any(len(r) != ncols for r in rows):
        raise ValueError(f"rows_of_images: every row needs {ncols} images, got lengths {[len(r) for r in rows]}")
    if labels is not None and len(labels) != ncols:
        raise ValueError(f"labels: expected {ncols} column labels, got {len(labels)}")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"row_labels: expected {len(rows)} row labels, got {len(row_labels)}")
    w, h = rows[0][0].size
    font = ImageFont.load_default()
    left = 0
    if row_labels is not None:
        left = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(t), font=font)) for t in row_labels) + 2 * pad
    top = caption_height if labels is not None else 0
    sheet = Image.new("RGB", (left + ncols * (w + pad) + pad, top + len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c in range(ncols):
        x = left + pad + c * (w + pad)
        if labels is not None:
            draw.text((x + 2, 2), str(labels[c]), fill=(0, 0, 0), font=font)
        for r, row in enumerate(rows):
            img = row[c]
            if img.size != (w, h):
                img = img.resize((w, h))
            sheet.paste(img.convert("RGB"), (x, top + pad + r * (h + pad)))
    if row_labels is not None:
        for r, text in enumerate(row_labels):
            draw.text((pad, top + pad + r * (h + pad) + h // 2 - 6), str(text), fill=(0, 0, 0), font=font)
    return sheet


def evenly_spaced_yaws(views: int) -> np.ndarray:
    """``views`` yaws 360/views apart, ascending from -180 (so the front view sits mid-row for even counts)."""
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise ValueError(f"views must be a positive int, got {views!r}")
    return np.sort(wrap_degrees(np.arange(views) * 360.0 / views))


def write_guidance_views(out_dir, views: int = 8, size: int = 512, head=None, pitch: float = 0.0) -> list[Path]:
    """Write openpose / depth / normal / hybrid PNGs for ``views`` evenly spaced yaws plus ``contact_sheet.png``.

    Files: ``yaw{+045}_{kind}.png`` per view and kind, and ``contact_sheet.png``
    (rows: kinds, columns: yaws). Returns every written path, the sheet last.
    """
    size = check_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yaws = evenly_spaced_yaws(views)
    written, rows = [], {k: [] for k in ("openpose", "depth", "normal", "hybrid")}
    for yaw in yaws:
        g = render_guidance(camera_label(yaw, pitch), size, head=head, kinds=KINDS)
        images = {"openpose": g.openpose, "depth": g.depth, "normal": g.normal, "hybrid": g.hybrid}
        for kind, img in images.items():
            path = out / f"yaw{int(round(yaw)):+04d}_{kind}.png"
            img.save(path)
            written.append(path)
            rows[kind].append(img)
    sheet = contact_sheet(list(rows.values()), labels=[f"yaw {y:+.0f}" for y in yaws], row_labels=list(rows))
    sheet_path = out / "contact_sheet.png"
    sheet.save(sheet_path)
    written.append(sheet_path)
    return written
