"""CLI of the prior stage: ``build-prior-pairs``, ``train-prior``, ``image-to-avatar``.

Registered by :mod:`avatar3d.cli` through ``COMMAND_MODULES``. Handlers keep
heavy imports inside; user mistakes raise ``ConfigError`` / ``ValueError`` /
``FileNotFoundError`` (the CLI prints one line and exits 2).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from avatar3d.cli import add_config_options, resolve_config
from avatar3d.config import ConfigError

EPILOG_OVERRIDES = ("Options not given as flags can be set as key=value overrides on top of the --config file, "
                    "with dotted names for nested options (e.g. model.cond_drop_prob=0.2).")


def register(sub) -> None:
    p = sub.add_parser(
        "build-prior-pairs",
        help="sample z -> w, render the front view, embed it with CLIP: Parquet pairs for the prior (Ray Data)",
        description="From a generator snapshot: z -> w (front-camera mapping) -> front render -> CLIP image "
                    "embedding, on a Ray Data actor pool. Row i depends only on (seed, i).",
        epilog=EPILOG_OVERRIDES,
    )
    add_config_options(p, "jobs/configs/prior_pairs_tiny.yaml", "snapshot=outputs/gan/x.safetensors")
    p.set_defaults(func=run_build_pairs_command)

    p = sub.add_parser(
        "train-prior",
        help="train the W-space diffusion prior on pairs (Ray Train + DeepSpeed, MLflow, registry)",
        description="Train a PriorTransformer over w conditioned on CLIP image embeddings (DDPM, classifier-free "
                    "guidance). Running the same run_name again resumes it.",
        epilog=EPILOG_OVERRIDES,
    )
    add_config_options(p, "jobs/configs/prior_train_tiny.yaml", "pairs=outputs/prior_pairs")
    p.add_argument("--resume", default=None, help="checkpoint folder of a train-prior run to continue")
    p.set_defaults(func=run_train_prior_command)

    p = sub.add_parser(
        "image-to-avatar",
        help="an input image -> a 3D avatar: renders from several views, a turntable GIF and a mesh",
        description="Embed IMAGE with the prior's CLIP encoder, sample w with classifier-free guidance and "
                    "render it with the generator. No pose estimation of the input is needed.",
    )
    p.add_argument("image", metavar="IMAGE", help="input image (PNG/JPEG, at least 16x16)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prior", required=True,
                   help="prior folder written by train-prior (<run>/prior), or models:/<name>/<version>")
    p.add_argument("--generator", default=None, help="generator snapshot to use instead of the prior's own")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0); same seed, same avatar")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the prior's, 1 = none)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the prior's)")
    p.add_argument("--sampler", choices=["ddim", "unipc"], default=None, help="sampling scheduler")
    p.add_argument("--views", type=int, default=8, help="evenly spaced yaws over 360 deg (default 8)")
    p.add_argument("--pitch", type=float, default=0.0, help="camera elevation of the views, degrees (default 0)")
    p.add_argument("--turntable-frames", type=int, default=36, help="GIF frames over 360 deg (0 = no GIF)")
    p.add_argument("--truncation-psi", type=float, default=1.0, help="pull w toward the average w (1 = off)")
    p.add_argument("--mesh-resolution", type=int, default=128, help="marching-cubes grid size (0 = no mesh)")
    p.add_argument("--mesh-iso", type=float, default=None,
                   help="density level of the surface (default: EG3D's sigma = 10)")
    p.set_defaults(func=run_image_to_avatar_command)


# -- handlers -------------------------------------------------------------------------------

def run_build_pairs_command(args) -> int:
    from avatar3d.prior.config import BuildPairsConfig

    cfg = resolve_config(BuildPairsConfig, args)
    if cfg is not None:
        from avatar3d.prior.pairs import run_build_pairs

        print(run_build_pairs(cfg).summary())
    return 0


def run_train_prior_command(args) -> int:
    from avatar3d.prior.config import TrainPriorConfig

    cfg = resolve_config(TrainPriorConfig, args, [f"resume={args.resume}"] * bool(args.resume))
    if cfg is not None:
        from avatar3d.prior.job import run_train_prior

        print(run_train_prior(cfg).summary())
    return 0


def run_image_to_avatar_command(args) -> int:
    if args.views < 1:
        raise ConfigError(f"--views: {args.views} must be >= 1")
    if args.turntable_frames < 0:
        raise ConfigError(f"--turntable-frames: {args.turntable_frames} must be >= 0")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: {args.steps} must be >= 1")
    if args.guidance_scale is not None and args.guidance_scale < 0:
        raise ConfigError(f"--guidance-scale: {args.guidance_scale} must be >= 0 (1 = no guidance)")
    if args.mesh_resolution and not 8 <= args.mesh_resolution <= 1024:
        raise ConfigError(f"--mesh-resolution: {args.mesh_resolution} is out of range; pass 8..1024 (0 = no mesh)")
    if not 0.0 <= args.truncation_psi <= 1.0:
        raise ConfigError(f"--truncation-psi: {args.truncation_psi} must be in [0, 1]")
    # Check the input before loading any model: a bad image fails in well under a second.
    from avatar3d.prior.encoder import load_input_image

    image = load_input_image(args.image, "IMAGE")
    from avatar3d.config import writable_dir

    out = writable_dir(args.out, "--out")
    pipe = load_pipeline(args.prior, args.generator)
    import numpy as np

    yaws = np.linspace(0.0, 360.0, args.views, endpoint=False)
    yaws = np.where(yaws > 180.0, yaws - 360.0, yaws)
    result = pipe(image, seed=args.seed, guidance_scale=args.guidance_scale, num_inference_steps=args.steps,
                  sampler=args.sampler, yaws=yaws, pitches=args.pitch, turntable_frames=args.turntable_frames,
                  truncation_psi=args.truncation_psi)
    for path in write_avatar(result, out, pipe.generator, args.mesh_resolution, str(args.image), args.mesh_iso):
        print(path)
    return 0


def load_pipeline(prior: str, generator: str | None = None):
    """A prior folder, or a registered prior (``models:/name/version``, pyfunc) -> ImageToAvatarPipeline."""
    from avatar3d.prior.pipeline import ImageToAvatarPipeline

    if prior.startswith("models:/"):
        import mlflow

        try:
            model = mlflow.pyfunc.load_model(prior)
        except Exception as exc:  # MLflow raises several kinds for a missing model/registry
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"--prior: cannot load {prior} ({msg}); set MLFLOW_TRACKING_URI to the registry "
                             "or pass a prior folder") from None
        pipe = model.unwrap_python_model().pipe
        if generator:
            from avatar3d.training.checkpoint import load_snapshot

            pipe.generator = load_snapshot(generator).generator
        return pipe
    return ImageToAvatarPipeline.from_pretrained(prior, generator=generator)


def write_avatar(result, out: Path, generator, mesh_resolution: int = 128, source: str = "",
                 mesh_iso: float | None = None) -> list[Path]:
    """Views (PNG each + a strip), turntable GIF, w (.npy), mesh, and a JSON record of the call."""
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    paths = []
    views = result.views[0]
    for yaw, image in zip(result.yaws, views):
        path = out / f"view_yaw{yaw:+07.1f}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    strip = out / "views.png"
    Image.fromarray(np.concatenate(list(views), axis=1)).save(strip)
    paths.append(strip)
    if result.turntable is not None:
        gif = out / "turntable.gif"
        iio.imwrite(gif, result.turntable[0], extension=".gif", duration=80, loop=0)
        paths.append(gif)
    w_path = out / "w.npy"
    np.save(w_path, result.w[0].numpy())
    paths.append(w_path)
    mesh = export_mesh(generator, result.w[:1], out, mesh_resolution, mesh_iso) if mesh_resolution else None
    if mesh is not None:
        paths.append(mesh)
    record = out / "avatar.json"
    record.write_text(json.dumps({"input": source, **result.meta, "yaws": result.yaws, "pitches": result.pitches,
                                  "mesh": str(mesh) if mesh else None}, indent=2))
    paths.append(record)
    return paths


def export_mesh(generator, w, out: Path, resolution: int, iso: float | None = None) -> Path | None:
    """The avatar's mesh (PLY with vertex colours) through :mod:`avatar3d.evaluation.mesh`.

    A generator with no surface at the iso level (an untrained one, say) gets
    a note instead of a failure: the renders are already written by then.
    """
    from avatar3d.evaluation.mesh import EG3D_ISO_SIGMA, export_mesh as write_mesh, generator_mesh
    from avatar3d.prior.views import broadcast_w

    try:
        mesh = generator_mesh(generator, broadcast_w(generator, w), resolution=resolution,
                              iso=EG3D_ISO_SIGMA if iso is None else iso)
    except ValueError as exc:
        print(f"note: mesh skipped: {str(exc).splitlines()[0]} (use --mesh-iso)", file=sys.stderr)
        return None
    return write_mesh(mesh, out / "mesh.ply")
