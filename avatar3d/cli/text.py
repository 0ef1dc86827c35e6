"""CLI of the text-to-avatar stage: ``avatar3d text-to-avatar "PROMPT" --out DIR [--config YAML] [key=value ...]``.

Registered by :mod:`avatar3d.cli` through ``COMMAND_MODULES``; heavy imports stay in the handler.
"""
from __future__ import annotations

import json

from avatar3d.cli.common import StageParser, field_help, overrides_epilog
from avatar3d.config import ConfigError, load_config, to_dict

CONFIG = "avatar3d.prior.text_config:TextToAvatarConfig"


class _IntermixedParser(StageParser):
    """The prompt and the key=value overrides are both positional: let them sit on either side of the flags
    (``text-to-avatar "PROMPT" --out DIR pipeline.preset=procedural``), which plain ``parse_args`` refuses."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def register(sub) -> None:
    from avatar3d.prior.text_config import TextToAvatarConfig as C

    p = sub.add_parser(
        "text-to-avatar",
        help="a text prompt -> a painted front view -> the prior's w -> a 3D avatar (views, turntable, mesh)",
        description="Build the view-aware front prompt around PROMPT, paint one front view with the configured "
                    "painter (pipeline.preset: sd15 = SD 1.5 + ControlNet from the front guidance, tiny = random "
                    "tiny weights, procedural = the parametric painter, whose avatar takes the prompt's attribute "
                    "phrases), turn it into w with the prior and render the avatar.",
        epilog=overrides_epilog("pipeline.preset=procedural resolution=64"),
    )
    p.__class__ = _IntermixedParser
    p.config_ref = CONFIG
    p.add_argument("prompt", metavar="PROMPT", help=field_help(C, "prompt"))
    p.add_argument("--out", required=True, help="output folder: " + field_help(C, "output_dir"))
    p.add_argument("--prior", default=None, help=field_help(C, "prior") + " (or prior= in the config)")
    p.add_argument("--config", default=None, help="YAML config of TextToAvatarConfig's options")
    p.add_argument("--overwrite", action="store_true", help=field_help(C, "overwrite"))
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. pipeline.preset=procedural seed=3")
    p.set_defaults(func=run_text_to_avatar_command)


def run_text_to_avatar_command(args) -> int:
    from avatar3d.prior.text_config import TextToAvatarConfig

    # The prompt and --out are given as flags; quoted as JSON strings, so YAML reads them back verbatim.
    flags = [f"prompt={json.dumps(args.prompt)}", f"output_dir={json.dumps(args.out)}"]
    if args.prior:
        flags.append(f"prior={json.dumps(args.prior)}")
    if args.overwrite:
        flags.append("overwrite=true")
    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("prompt", "output_dir"):
            raise ConfigError(f"{key}: give it as {'PROMPT' if key == 'prompt' else '--out'}, not as an override")
    cfg = load_config(TextToAvatarConfig, args.config, [*args.overrides, *flags])
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from avatar3d.prior.text import run_text_to_avatar

    print(run_text_to_avatar(cfg).summary())
    return 0
