"""What every subcommand module shares: config options, the resolved config, defaults taken from configs."""
from __future__ import annotations

import dataclasses
import json

from avatar3d.config import ConfigError, from_dict, load_config, to_dict

EPILOG_OVERRIDES = (
    "Options not given as flags can be set as key=value overrides on top of the "
    "--config file, with dotted names for nested options (e.g. pipeline.steps=4)."
)


def add_config_options(p, example: str, overrides_example: str) -> None:
    """The options every config-driven stage takes: --config, --print-config, key=value overrides."""
    p.add_argument("--config", default=None, help=f"YAML config, e.g. {example}")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {overrides_example}")


def resolve_config(cls, args, extra_overrides: list[str] = ()):
    """The validated config of a stage; with --print-config, print it and return None (nothing runs)."""
    cfg = load_config(cls, args.config, [*args.overrides, *extra_overrides])
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return None
    return cfg


def default(cls, name: str):
    """The default of option ``name`` of config class ``cls``: a flag's default comes from the config,
    so the library, the chain and the CLI share one value."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    raise KeyError(f"{cls.__name__} has no option {name!r}")


def option_help(cls, name: str, text: str | None = None) -> str:
    """Help text for a flag mirroring option ``name``: the config's help plus its default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f"{text or f.metadata.get('help', name)} (default {default(cls, name)})"


def from_flags(cls, data: dict, flags: dict[str, str] | None = None):
    """Flag values (field -> value) -> a validated config; an error names the flag, not the field
    (``flags`` maps a field to its flag where it is not ``--<field with dashes>``)."""
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        msg = str(exc)
        field = msg.split(":", 1)[0].split(" ", 1)[0]
        if field not in data:
            raise
        flag = (flags or {}).get(field, "--" + field.replace("_", "-"))
        raise ConfigError(flag + msg[len(field):]) from None
