"""What every subcommand module shares: config options, the resolved config, the options listing of
``--help``, defaults taken from configs."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import textwrap

from avatar3d.config import ConfigError, describe, from_dict, load_config, to_dict


def overrides_epilog(example: str) -> str:
    """The sentence every config-driven stage's ``--help`` ends with, with a stage-specific example."""
    return ("Options not given as flags can be set as key=value overrides on top of the --config file, "
            f"with dotted names for nested options (e.g. {example}).")


class StageParser(argparse.ArgumentParser):
    """A subcommand's parser; for a config-driven stage (``config_ref`` set) ``--help`` ends with every
    option of the stage's config class: name, type, default and help (imported only when asked)."""

    config_ref: str | None = None

    def format_help(self) -> str:
        text = super().format_help()
        if self.config_ref:
            module, _, name = self.config_ref.partition(":")
            text += "\n" + format_options(getattr(importlib.import_module(module), name))
        return text


def format_options(cls, width: int = 100) -> str:
    """The options table of config class ``cls`` (from its dataclass fields and their ``help`` metadata)."""
    rows = describe(cls)
    lines = ["config options (key=value; default in brackets):"]
    name_w = min(34, max(len(n) for n, *_ in rows) + 2)
    for name, tp, value, help_text in rows:
        shown = json.dumps(to_dict(value)) if value is not None else "null"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        body = f"{help_text + ' ' if help_text else ''}[{tp.replace('NoneType', 'None')}; {shown}]"
        wrapped = textwrap.wrap(body, width - name_w - 2, break_on_hyphens=False) or [""]
        lines.append(f"  {name:<{name_w}}{wrapped[0]}")
        lines.extend(" " * (name_w + 2) + w for w in wrapped[1:])
    return "\n".join(lines) + "\n"


def add_config_options(p, config: str, example: str, overrides_example: str) -> None:
    """The options every config-driven stage takes: --config, --print-config, key=value overrides;
    ``config`` ("module:Class") names the stage's config class, listed by ``--help``."""
    p.config_ref = config
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


def field_help(cls, name: str) -> str:
    """The ``help`` metadata of option ``name`` of config class ``cls``."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("help", name)


def option_help(cls, name: str, text: str | None = None) -> str:
    """Help text for a flag mirroring option ``name``: the config's help plus its default."""
    value = default(cls, name)
    return f"{text or field_help(cls, name)} (default {'none' if value in ('', None) else value})"


def from_flags(cls, data: dict, flags: dict[str, str] | None = None):
    """Flag values (field -> value) -> a validated config; an error names the flag, not the field
    (``flags`` maps a field to its flag where it is not ``--<field with dashes>``)."""
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        msg = str(exc)
        field = msg.split(":", 1)[0].split(" ", 1)[0].split("=", 1)[0]  # "field: ..." or "field=value: ..."
        if field not in data:
            raise
        flag = (flags or {}).get(field, "--" + field.replace("_", "-"))
        raise ConfigError(flag + msg[len(field):]) from None
