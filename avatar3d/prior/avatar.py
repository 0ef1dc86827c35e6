"""The image-to-avatar stage: an image in, a 3D avatar out (views, turntable, w, mesh).

``run_image_to_avatar(ImageToAvatarConfig)`` is what ``avatar3d image-to-avatar``
and the chain's ``image_to_avatar`` stage both call:

1. check the input image (before any model loads: a bad file fails in well under a second),
2. load the prior (a folder written by train-prior, or a registered prior fetched by the
   project's one ``models:/`` resolver) and its generator,
3. embed the image, sample w with classifier-free guidance, render the views,
4. write the views, a strip, the turntable GIF, ``w.npy``, the mesh and ``avatar.json``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from avatar3d.atomic import atomic_path, atomic_write
from avatar3d.config import ConfigError, writable_dir
from avatar3d.evaluation.mesh import EG3D_ISO_SIGMA, export_mesh as write_mesh, generator_mesh
from avatar3d.prior.config import ImageToAvatarConfig
from avatar3d.prior.encoder import load_input_image
from avatar3d.prior.pipeline import PRIOR_JSON, ImageToAvatarPipeline
from avatar3d.prior.views import broadcast_w
from avatar3d.tracking.models import is_mlflow_uri, resolve_model_uri

log = logging.getLogger(__name__)

AVATAR_JSON = "avatar.json"  # written last: its presence marks a finished avatar in a folder


@dataclass
class AvatarResult:
    output_dir: Path
    files: list[Path]
    w: np.ndarray


def run_image_to_avatar(cfg: ImageToAvatarConfig) -> AvatarResult:
    # Check the input before loading any model.
    image = load_input_image(cfg.image, "image")
    if (Path(cfg.output_dir) / AVATAR_JSON).exists() and not cfg.overwrite:
        raise ConfigError(f"output_dir={cfg.output_dir!r} already holds an avatar ({AVATAR_JSON}); pass --overwrite "
                          "to replace it, or another folder")
    writable_dir(cfg.output_dir, "output_dir", create=False)  # checked now, created once the models have loaded

    # The prior and its generator.
    pipe = load_pipeline(cfg.prior, cfg.generator or None, cfg.tracking_uri or None)
    out = writable_dir(cfg.output_dir, "output_dir")

    # Image -> w -> views and turntable.
    yaws = view_yaws(cfg.views)
    result = pipe(image, seed=cfg.seed, guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.steps,
                  sampler=cfg.sampler, yaws=yaws, pitches=cfg.pitch, turntable_frames=cfg.turntable_frames,
                  truncation_psi=cfg.truncation_psi)

    # Files (the record names the prior and the generator that made the avatar).
    result.meta.update(made_by(cfg))
    files = write_avatar(result, out, pipe.generator, cfg.mesh_resolution, cfg.image, cfg.mesh_iso)
    return AvatarResult(output_dir=out, files=files, w=result.w[0].numpy())


def made_by(cfg) -> dict:
    """What made an avatar, for its record: the prior as given, and the generator override or the prior's own."""
    return {"prior": cfg.prior, "generator": cfg.generator or "the prior's own"}


def view_yaws(views: int) -> np.ndarray:
    """``views`` evenly spaced yaws over 360 degrees from the front, in (-180, 180]."""
    yaws = np.linspace(0.0, 360.0, views, endpoint=False)
    return np.where(yaws > 180.0, yaws - 360.0, yaws)


def load_pipeline(prior: str, generator: str | None = None, tracking_uri: str | None = None,
                  field: str = "prior") -> ImageToAvatarPipeline:
    """A prior folder, or a registered prior (``models:/...``) -> ImageToAvatarPipeline."""
    folder = Path(prior)
    if is_mlflow_uri(prior):
        downloaded = resolve_model_uri(prior, tracking_uri, field=field)
        found = sorted(downloaded.rglob(PRIOR_JSON))
        if not found:
            raise ValueError(f"{field}: {prior} holds no prior folder ({PRIOR_JSON}); pass a prior registered "
                             "by avatar3d train-prior")
        folder = found[0].parent
    return ImageToAvatarPipeline.from_pretrained(folder, generator=generator)


def write_avatar(result, out: Path, generator, mesh_resolution: int = 128, source: str = "",
                 mesh_iso: float | None = None) -> list[Path]:
    """Views (PNG each + a strip), turntable GIF, w (.npy), mesh, and a JSON record of the call."""
    paths = []
    views = result.views[0]
    for yaw, image in zip(result.yaws, views):
        paths.append(save_png(image, out / f"view_yaw{yaw:+07.1f}.png"))
    paths.append(save_png(np.concatenate(list(views), axis=1), out / "views.png"))
    if result.turntable is not None:
        with atomic_path(out / "turntable.gif") as tmp:
            iio.imwrite(tmp, result.turntable[0], extension=".gif", duration=80, loop=0)
        paths.append(out / "turntable.gif")
    with atomic_path(out / "w.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, result.w[0].numpy())
    paths.append(out / "w.npy")
    mesh = export_mesh(generator, result.w[:1], out, mesh_resolution, mesh_iso) if mesh_resolution else None
    if mesh is not None:
        paths.append(mesh)
    # What an earlier avatar in this folder wrote and this one does not (fewer views, no GIF, no mesh) goes.
    stale = [*out.glob("view_yaw*.png"), out / "turntable.gif", out / "mesh.ply"]
    for path in stale:
        if path not in paths:
            path.unlink(missing_ok=True)
    record = out / AVATAR_JSON
    atomic_write(record, json.dumps({"input": source, **result.meta, "yaws": result.yaws, "pitches": result.pitches,
                                     "mesh": str(mesh) if mesh else None}, indent=2))
    paths.append(record)
    return paths


def save_png(image, path: Path) -> Path:
    """An HxWx3 uint8 array as a PNG, written whole or not at all."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def export_mesh(generator, w, out: Path, resolution: int, iso: float | None = None) -> Path | None:
    """The avatar's mesh (PLY with vertex colours) through :mod:`avatar3d.evaluation.mesh`.

    A generator with no surface at the iso level (an untrained one, say) gets
    a note instead of a failure: the renders are already written by then.
    """
    try:
        mesh = generator_mesh(generator, broadcast_w(generator, w), resolution=resolution,
                              iso=EG3D_ISO_SIGMA if iso is None else iso)
    except ValueError as exc:
        log.warning(f"mesh skipped: {str(exc).splitlines()[0]} (use --mesh-iso)")
        return None
    return write_mesh(mesh, out / "mesh.ply")
