"""The ``avatar3d`` command line.

Every subcommand is a thin shell over a library function: parse, validate,
call, print. User mistakes (bad option, missing file, bad value) print one
line ``avatar3d <cmd>: error: ...`` and exit 2; set ``AVATAR3D_DEBUG=1`` to
see the traceback. Heavy imports (torch, ray, diffusers) happen inside the
handlers so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

from avatar3d.config import SEED_MAX, ConfigError, writable_dir
from avatar3d.hub import ModelUnavailableError
from avatar3d.logs import LEVEL_ENV, setup_logging

from avatar3d.cli.common import StageParser, add_config_options, overrides_epilog, resolve_config


# -- subcommands ----------------------------------------------------------------

MAX_GUIDANCE_VIEWS = 360


def _add_guidance(sub) -> None:
    p = sub.add_parser(
        "guidance",
        help="render OpenPose / depth / normal / hybrid guidance images of the canonical head",
        description="Render guidance images of the 3D head for evenly spaced yaws (pitch 0) plus a contact sheet.",
    )
    p.add_argument("--views", type=int, default=8, help="number of evenly spaced yaws over 360 deg (default 8)")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (default 512)")
    p.add_argument("--pitch", type=float, default=0.0, help="camera elevation in degrees, + is above (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mesh", default=None, help="optional user head mesh (any format trimesh loads)")
    p.add_argument("--landmarks", default=None, help="landmark JSON for --mesh")
    p.set_defaults(func=_run_guidance)


def _run_guidance(args) -> int:
    if not 1 <= args.views <= MAX_GUIDANCE_VIEWS:
        raise ConfigError(f"--views: {args.views} is out of range; pass 1..{MAX_GUIDANCE_VIEWS} (one view per degree "
                          "at most: every view is also a tile of the contact sheet)")
    if args.size < 16 or args.size > 4096:
        raise ConfigError(f"--size: {args.size} is out of range; pass 16..4096")
    if (args.mesh is None) != (args.landmarks is None):
        raise ConfigError("--mesh and --landmarks go together: pass both or neither")
    from avatar3d.scene.guidance import write_guidance_views
    from avatar3d.scene.head import load_head

    head = load_head(args.mesh, args.landmarks) if args.mesh else None
    out = writable_dir(args.out, "--out")
    paths = write_guidance_views(out, views=args.views, size=args.size, head=head, pitch=args.pitch)
    for path in paths:
        print(path)
    return 0


def _add_prompts(sub) -> None:
    p = sub.add_parser(
        "prompts",
        help="sample view- and attribute-aware prompts",
        description="Sample prompts as dataset generation would: style + subject + view + attributes, and a negative prompt.",
    )
    p.add_argument("--n", type=int, default=10, help="how many samples (default 10)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0); sample i depends only on (seed, i)")
    p.add_argument("--styles", default=None, help="YAML or TXT file of styles (default: the 50 built-ins)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(func=_run_prompts)


MAX_PROMPTS = 10_000_000
PROMPT_CHUNK = 1000  # prompts are made and printed this many at a time: memory stays flat for any --n


def _run_prompts(args) -> int:
    if not 1 <= args.n <= MAX_PROMPTS:
        raise ConfigError(f"--n: {args.n} is out of range; pass 1..{MAX_PROMPTS:,} (20x the paper's dataset)")
    if not 0 <= args.seed <= SEED_MAX:
        raise ConfigError(f"--seed: {args.seed} is out of range; pass 0..{SEED_MAX}")
    from avatar3d.prompts import format_prompt_table, load_styles, sample_prompts

    styles = load_styles(args.styles, field="--styles") if args.styles else None
    for start in range(0, args.n, PROMPT_CHUNK):
        samples = sample_prompts(min(PROMPT_CHUNK, args.n - start), args.seed, styles=styles, start=start)
        if args.json:
            for s in samples:
                print(json.dumps(s.to_dict()))
        else:
            print(format_prompt_table(samples))
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate the multi-view dataset with ControlNet on Ray Data into Parquet",
        description="Specs -> guidance -> ControlNet (autoscaled actor pool) -> Parquet shards. Re-running resumes.",
        epilog=overrides_epilog("pipeline.steps=4"),
    )
    add_config_options(p, "avatar3d.datagen.config:GenerateConfig", "jobs/configs/generate_tiny.yaml", "num_samples=16 output_dir=outputs/ds")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from avatar3d.datagen.config import GenerateConfig

    cfg = resolve_config(GenerateConfig, args)
    if cfg is not None:
        from avatar3d.datagen.job import run_generation

        print(run_generation(cfg).summary())
    return 0


def _add_train_gan(sub) -> None:
    p = sub.add_parser(
        "train-gan",
        help="train the tri-plane GAN on a generated dataset (Ray Train + DeepSpeed, MLflow)",
        description="Train the EG3D-style GAN with the coarse-to-fine discriminator. Running the same run_name "
                    "again resumes it; --resume continues from a checkpoint folder; --transfer starts a new "
                    "run from a snapshot's generator weights.",
        epilog=overrides_epilog("model.preset=tiny scaling.num_workers=2"),
    )
    add_config_options(p, "avatar3d.training.config:TrainGANConfig", "jobs/configs/train_gan_tiny.yaml", "data.path=outputs/ds total_kimg=1")
    p.add_argument("--resume", default=None, help="checkpoint folder of a train-gan run to continue")
    p.add_argument("--transfer", default=None, help="snapshot .safetensors to initialise G from")
    p.set_defaults(func=_run_train_gan)


def _run_train_gan(args) -> int:
    from avatar3d.training.config import TrainGANConfig

    flags = [f"resume={args.resume}"] * bool(args.resume) + [f"transfer={args.transfer}"] * bool(args.transfer)
    cfg = resolve_config(TrainGANConfig, args, flags)
    if cfg is not None:
        from avatar3d.training.job import run_train_gan

        print(run_train_gan(cfg).summary())
    return 0


def _add_run_pipeline(sub) -> None:
    p = sub.add_parser(
        "run-pipeline",
        help="run the stages end to end (guidance -> generate -> train-gan -> report), restartable",
        description="Chain the stages under one output folder; a re-run skips finished stages, "
                    "from_stage=<stage> re-runs from there.",
        epilog=overrides_epilog("from_stage=train_gan"),
    )
    p.config_ref = "avatar3d.chain_config:ChainConfig"
    p.add_argument("--config", default=None, help="YAML config, e.g. jobs/configs/demo_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. output_dir=outputs/demo from_stage=train_gan")
    p.set_defaults(func=_run_run_pipeline)


def _run_run_pipeline(args) -> int:
    from avatar3d.chain_config import ChainConfig
    from avatar3d.config import load_config

    cfg = load_config(ChainConfig, args.config, args.overrides)  # a bad option fails before the stages load
    from avatar3d.chain import run_chain

    print(run_chain(cfg).summary())
    return 0


SUBCOMMANDS = [_add_guidance, _add_prompts, _add_generate, _add_train_gan, _add_run_pipeline]

# Stages that own their subcommands: each module has ``register(subparsers)``
# adding parsers whose ``func(args) -> int`` does the work (heavy imports inside).
COMMAND_MODULES: list[str] = ["avatar3d.cli.evaluation", "avatar3d.cli.lora", "avatar3d.cli.prior", "avatar3d.cli.text"]


# -- entry point ----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar3d",
        description="Text prompts and example images -> stylized 3D avatars (StyleAvatar3D on Ray, DeepSpeed, MLflow).",
    )
    from avatar3d import __version__

    parser.add_argument("--version", action="version", version=f"avatar3d {__version__}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (no progress lines)")
    level.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=StageParser)
    for add in SUBCOMMANDS:
        add(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from avatar3d.runtime import apply_local_defaults

    apply_local_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet or args.verbose:  # exported, so the Ray workers of a local run follow it
        os.environ[LEVEL_ENV] = "WARNING" if args.quiet else "DEBUG"
    # MLflow's own INFO lines ("Creating initial MLflow database tables...", "View run at ...") would break
    # the one-line promise of a late refusal; our tracker logs the run instead. Read by MLflow at import,
    # so set before any stage imports it; a user's own value wins.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if args.verbose else "WARNING")
    # Likewise the hub's per-file bars ("Loading weights", "Writing model shards"), which transformers follows;
    # read at import, inherited by the Ray workers of a local run; a user's own value wins.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        setup_logging()
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`avatar3d prompts ... | head`): stop quietly, as cat would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ConfigError, ValueError, ModelUnavailableError, OSError) as exc:  # OSError: a full disk, a bad path
        if os.environ.get("AVATAR3D_DEBUG") == "1":  # the traceback first, then the same line and status
            traceback.print_exc()
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"avatar3d {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avatar3d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
