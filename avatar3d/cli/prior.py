"""CLI of the prior stage: ``build-prior-pairs``, ``train-prior``, ``image-to-avatar``.

Registered by :mod:`avatar3d.cli` through ``COMMAND_MODULES``. Handlers keep
heavy imports inside; user mistakes raise ``ConfigError`` / ``ValueError`` /
``FileNotFoundError`` (the CLI prints one line and exits 2).
"""
from __future__ import annotations

from avatar3d.cli.common import add_config_options, default, field_help, from_flags, option_help, overrides_epilog, resolve_config
from avatar3d.prior.config import SAMPLERS, ImageToAvatarConfig

EPILOG_OVERRIDES = overrides_epilog("model.cond_drop_prob=0.2")


def register(sub) -> None:
    p = sub.add_parser(
        "build-prior-pairs",
        help="sample z -> w, render the front view, embed it with CLIP: Parquet pairs for the prior (Ray Data)",
        description="From a generator snapshot: z -> w (front-camera mapping) -> front render -> CLIP image "
                    "embedding, on a Ray Data actor pool. Row i depends only on (seed, i).",
        epilog=EPILOG_OVERRIDES,
    )
    add_config_options(p, "avatar3d.prior.config:BuildPairsConfig", "jobs/configs/prior_pairs_tiny.yaml", "snapshot=outputs/gan/x.safetensors")
    p.set_defaults(func=run_build_pairs_command)

    p = sub.add_parser(
        "train-prior",
        help="train the W-space diffusion prior on pairs (Ray Train + DeepSpeed, MLflow, registry)",
        description="Train a PriorTransformer over w conditioned on CLIP image embeddings (DDPM, classifier-free "
                    "guidance). Running the same run_name again resumes it.",
        epilog=EPILOG_OVERRIDES,
    )
    add_config_options(p, "avatar3d.prior.config:TrainPriorConfig", "jobs/configs/prior_train_tiny.yaml", "pairs=outputs/prior_pairs")
    p.add_argument("--resume", default=None, help="checkpoint folder of a train-prior run to continue")
    p.set_defaults(func=run_train_prior_command)

    p = sub.add_parser(
        "image-to-avatar",
        help="an input image -> a 3D avatar: renders from several views, a turntable GIF and a mesh",
        description="Embed IMAGE with the prior's CLIP encoder, sample w with classifier-free guidance and "
                    "render it with the generator. No pose estimation of the input is needed.",
    )
    C = ImageToAvatarConfig
    p.add_argument("image", metavar="IMAGE", help=field_help(C, "image"))
    p.add_argument("--out", required=True, help="output folder: " + field_help(C, "output_dir"))
    p.add_argument("--prior", required=True, help=field_help(C, "prior"))
    p.add_argument("--generator", default=default(C, "generator"), help=option_help(C, "generator"))
    p.add_argument("--tracking-uri", default=default(C, "tracking_uri"), help=option_help(C, "tracking_uri"))
    p.add_argument("--seed", type=int, default=default(C, "seed"), help=option_help(C, "seed"))
    p.add_argument("--guidance-scale", type=float, default=default(C, "guidance_scale"),
                   help=field_help(C, "guidance_scale"))
    p.add_argument("--steps", type=int, default=default(C, "steps"), help=field_help(C, "steps"))
    p.add_argument("--sampler", choices=list(SAMPLERS), default=default(C, "sampler"),
                   help=field_help(C, "sampler"))
    p.add_argument("--views", type=int, default=default(C, "views"), help=option_help(C, "views"))
    p.add_argument("--pitch", type=float, default=default(C, "pitch"), help=option_help(C, "pitch"))
    p.add_argument("--turntable-frames", type=int, default=default(C, "turntable_frames"),
                   help=option_help(C, "turntable_frames"))
    p.add_argument("--truncation-psi", type=float, default=default(C, "truncation_psi"),
                   help=option_help(C, "truncation_psi"))
    p.add_argument("--mesh-resolution", type=int, default=default(C, "mesh_resolution"),
                   help=option_help(C, "mesh_resolution"))
    p.add_argument("--mesh-iso", type=float, default=default(C, "mesh_iso"),
                   help=field_help(C, "mesh_iso"))
    p.add_argument("--overwrite", action="store_true", help=field_help(C, "overwrite"))
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
    from avatar3d.prior.avatar import run_image_to_avatar

    data = {"image": args.image, "output_dir": args.out, "prior": args.prior, "generator": args.generator,
            "tracking_uri": args.tracking_uri,
            "seed": args.seed, "guidance_scale": args.guidance_scale, "steps": args.steps, "sampler": args.sampler,
            "views": args.views, "pitch": args.pitch, "turntable_frames": args.turntable_frames,
            "truncation_psi": args.truncation_psi, "mesh_resolution": args.mesh_resolution,
            "mesh_iso": args.mesh_iso, "overwrite": args.overwrite}
    cfg = from_flags(ImageToAvatarConfig, data, {"output_dir": "--out", "image": "IMAGE"})
    for path in run_image_to_avatar(cfg).files:
        print(path)
    return 0

