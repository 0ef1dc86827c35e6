"""CLI of the prior stage: ``build-prior-pairs``, ``train-prior``, ``image-to-avatar``.

Registered by :mod:`avatar3d.cli` through ``COMMAND_MODULES``. Handlers keep
heavy imports inside; user mistakes raise ``ConfigError`` / ``ValueError`` /
``FileNotFoundError`` (the CLI prints one line and exits 2).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from avatar3d.cli.common import add_config_options, from_flags, resolve_config
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
    from avatar3d.prior.avatar import ImageToAvatarConfig, run_image_to_avatar

    data = {"image": args.image, "output_dir": args.out, "prior": args.prior, "generator": args.generator or "",
            "seed": args.seed, "guidance_scale": args.guidance_scale, "steps": args.steps, "sampler": args.sampler,
            "views": args.views, "pitch": args.pitch, "turntable_frames": args.turntable_frames,
            "truncation_psi": args.truncation_psi, "mesh_resolution": args.mesh_resolution,
            "mesh_iso": args.mesh_iso}
    cfg = from_flags(ImageToAvatarConfig, data, {"output_dir": "--out", "image": "IMAGE"})
    for path in run_image_to_avatar(cfg).files:
        print(path)
    return 0

