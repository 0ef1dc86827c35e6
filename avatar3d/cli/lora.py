"""``avatar3d lora-train``: a character LoRA from a folder of ~10 images (registered with ``register(subparsers)``)."""
from __future__ import annotations

import json

EPILOG = (
    "Options not given as flags can be set as key=value overrides on top of the --config file, with dotted "
    "names for nested options (e.g. steps=400 tracking.register=false). Then paint the character's dataset: "
    "avatar3d generate --config jobs/configs/generate_sd15.yaml pipeline.lora=models:/<name>/<version> "
    "styles_file=<output_dir>/lora/styles.yaml"
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lora-train",
        help="fine-tune Stable Diffusion with LoRA on ~10 images of one character (MLflow, registry)",
        description="Train a LoRA on the UNet (optionally the text encoder) from a folder of images of one "
                    "character, captioned with --token and the configured style; saved in diffusers' LoRA "
                    "format, logged to MLflow and registered as models:/<name>/<version>.",
        epilog=EPILOG,
    )
    p.config_ref = "avatar3d.lora.config:LoraTrainConfig"
    p.add_argument("--images", default=None, help="folder of the character's images (png/jpg/webp/bmp; about 10)")
    p.add_argument("--token", default=None, help="trigger word that calls the character in prompts, e.g. '<mychar>'")
    p.add_argument("--config", default=None, help="YAML config, e.g. jobs/configs/lora_sd15.yaml or lora_tiny.yaml")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=400 output_dir=outputs/lora_mychar")
    p.set_defaults(func=run)


def build_config(args):
    """YAML + overrides + the flags (set verbatim: a token like '123' or '<a: b>' is not YAML-parsed)."""
    from avatar3d.config import from_dict, parse_override, read_yaml, set_dotted
    from avatar3d.lora.config import LoraTrainConfig

    data = read_yaml(args.config) if args.config else {}
    for item in args.overrides:
        set_dotted(data, *parse_override(item))
    if args.images is not None:
        data["images"] = args.images
    if args.token is not None:
        data["token"] = args.token
    return from_dict(LoraTrainConfig, data)


def run(args) -> int:
    from avatar3d.config import to_dict

    cfg = build_config(args)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from avatar3d.lora.train import train_lora

    print(train_lora(cfg).summary())
    return 0
