"""Typed configs: dataclasses loaded from YAML, overridden from the command line.

Config is data (the NVlabs habit): every stage describes its options as a
plain ``@dataclass`` with visible defaults, and the resolved config is dumped
with every run. This module turns YAML + ``key=value`` overrides into such a
dataclass and checks it against the type hints and the field metadata::

    @dataclass
    class TrainConfig:
        batch: int = field(default=32, metadata={"help": "images per step", "min": 1})
        mode: str = field(default="coarse_to_fine", metadata={"choices": ["fine", "coarse", "coarse_to_fine"]})

    cfg = load_config(TrainConfig, "jobs/configs/train_tiny.yaml", ["batch=8", "model.size=tiny"])

Supported types: int, float, bool, str, Optional[X], list[X], tuple[X, ...],
tuple[X, Y], dict[str, X], Literal[...] and nested dataclasses. Mistakes raise
:class:`ConfigError` with one line naming the field, the bad value and what is
allowed; the CLI prints that line and exits with status 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avatar3d.atomic import atomic_write

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a config or an option: one line, no traceback."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base_dir: str | Path | None = None) -> T:
    """Build ``cls`` from an optional YAML file plus ``key=value`` overrides, validated.

    Relative input paths (fields marked ``path``) in the file are read from the file's folder, so a config
    works from any current folder; those in ``overrides`` from ``base_dir`` (default: the current folder,
    as a shell user expects). Output folders stay relative to the current folder."""
    data: dict[str, Any] = {}
    if path is not None:
        folder = Path(path).parent
        data = resolve_paths(cls, read_yaml(path), folder)
        for f in dataclasses.fields(cls):
            if f.metadata.get("path") == CONFIG_DIR and f.name not in data:
                data[f.name] = os.path.abspath(folder)
    for item in overrides or []:
        key, value = parse_override(item)
        if base_dir is not None:
            value = resolve_paths(cls, {key: value}, Path(base_dir), dotted=True)[key]
        set_dotted(data, key, value)
    return from_dict(cls, data)


# Field metadata ``path``: INPUT, a file or folder to read (or a URI); MODEL, a hub id or a local folder
# (resolved only where that folder exists, the rule ``from_pretrained`` itself follows); CONFIG_DIR, set
# to the config file's folder when not given (the chain reads its *_overrides lists' paths from there).
INPUT, MODEL, CONFIG_DIR = "input", "model", "config_dir"
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # models:/, runs:/, s3://, file:///, ...


def resolve_paths(cls: type, data: Any, base: Path, dotted: bool = False) -> Any:
    """``data`` with the relative paths of ``cls``'s path fields joined onto ``base`` (absolute, normalised);
    ``dotted``: keys are dotted override names (``data.path``)."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = dict(data)
    for key, value in data.items():
        name, _, rest = key.partition(".") if dotted else (key, "", "")
        f = fields.get(name)
        if f is None:
            continue  # unknown options are from_dict's to refuse
        if dataclasses.is_dataclass(hints[name]):
            if rest:
                out[key] = resolve_paths(hints[name], {rest: value}, base, dotted=True)[rest]
            elif isinstance(value, dict):
                out[key] = resolve_paths(hints[name], value, base)
        elif not rest:
            out[key] = _resolved(value, f.metadata.get("path"), base)
    return out


def _resolved(value: Any, kind: str | None, base: Path) -> Any:
    if kind not in (INPUT, MODEL) or not isinstance(value, str) or not value.strip() or URI.match(value):
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return value
    joined = os.path.abspath(base / path)
    if kind == MODEL and not os.path.exists(joined):
        return value  # a hub id (org/name), or a folder relative to the current one
    return joined


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (pass an existing YAML file, e.g. jobs/configs/<name>.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of options, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", parsed value). Values are parsed as YAML scalars/lists."""
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. num_samples=16)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Validate a mapping against dataclass ``cls`` and build it (recursively)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of options, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = prefix + unknown[0]
        close = closest(unknown[0], list(fields))
        hint = f"; did you mean {prefix + close!r}?" if close else f"; known options: {', '.join(sorted(fields))}"
        raise ConfigError(f"unknown option {name!r}{hint}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        if (isinstance(value, dict) and dataclasses.is_dataclass(hints[name])
                and f.default_factory is not dataclasses.MISSING):
            # A partial nested mapping overrides the parent's own default (train-gan's tracking.experiment
            # stays "avatar3d-gan" when only tracking.register_name is given), not the nested class's.
            value = _merged(to_dict(f.default_factory()), value)
        kwargs[name] = coerce(value, hints[name], prefix + name, f.metadata)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_fits_in_memory(count: int, bytes_each: int, field: str, what: str) -> None:
    """Refuse a size whose in-memory part cannot fit in half of this machine's free memory (one line with
    the largest size that fits); no check where the OS gives no cheap figure."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    need = count * bytes_each
    if need > available // 2:
        raise ConfigError(f"{field}={count}: {what} needs ~{need / 2**30:,.1f} GiB (about {bytes_each:,} bytes each) "
                          f"and this machine has {available / 2**30:,.1f} GiB free; pass {field} <= "
                          f"{available // 2 // bytes_each:,}")


MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 16, 8192  # one rule wherever a user's image is taken (prior input, LoRA set)


def check_image_size(width: int, height: int, what: str) -> None:
    """Refuse an image too small to carry a face (a 1x1 upscaled to 512 teaches blur) or too large to hold."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ConfigError(f"{what}: {width}x{height} pixels is too small; pass an image at least "
                          f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ConfigError(f"{what}: {width}x{height} pixels is too large; pass an image at most "
                          f"{MAX_IMAGE_SIDE} pixels per side")


SEED_MAX = 2**32 - 1  # numpy's and every generator's common range


def seed_field(default: int = 0, help: str = "seed") -> Any:
    """The one rule for seeds in every config: an integer in [0, 2**32 - 1]."""
    return dataclasses.field(default=default, metadata={"min": 0, "max": SEED_MAX, "help": help})


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(value: str, field: str) -> str:
    """A name that becomes a folder and an MLflow name (run, registered model): letters, digits, '.', '_'
    and '-', starting with a letter or digit (so never '', '..' or a path); -> it."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(f"{field}={value!r}: use letters, digits, '.', '_' or '-', starting with a letter "
                          "or digit (at most 100), e.g. gan-tiny")
    return value


def writable_dir(path: str | Path, field: str, create: bool = True) -> Path:
    """Check, before any work, that ``path`` is a folder this process can write to -> it. ``create``:
    make it (and its parents) now; else only check that it exists writable or could be created.
    An empty path is refused (it would silently mean the current folder)."""
    if not str(path).strip():
        raise ConfigError(f"{field} is empty: pass the folder to write to (e.g. {field}=outputs/run)")
    out = Path(path)
    if not create:
        probe = out.expanduser().absolute()
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise ConfigError(f"{field}={str(path)!r} cannot be created: {probe} is a file; pass a writable folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"{field}={str(path)!r} is not writable ({probe}); pass a writable folder")
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot create folder {out} ({exc.strerror}); pass a writable path") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"{field}: folder {out} is not writable; pass a writable path")
    return out


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain, JSON/YAML-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config beside a run's outputs (YAML, or JSON by suffix)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(obj)
    text = json.dumps(data, indent=2) if p.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    return atomic_write(p, text)


def describe(cls: type, prefix: str = "", values: Any = None) -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, help) for every option; used for ``--help`` listings. A nested
    option's default is the parent's (``tracking.experiment`` of train-gan is "avatar3d-gan")."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if values is not None:
            default = getattr(values, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + ".", default))
            continue
        rows.append((prefix + f.name, _type_name(tp), default, f.metadata.get("help", "")))
    return rows


# -- coercion -----------------------------------------------------------------

def coerce(value: Any, tp: Any, name: str, meta: typing.Mapping[str, Any] | None = None) -> Any:
    meta = meta or {}
    out = _coerce_type(value, tp, name)
    _check_meta(out, name, meta)
    return out


def _coerce_type(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce_type(value, arg, name)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{name}: {value!r} is not a valid {_type_name(tp)}")
    if origin is typing.Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML 1.1 reads no/off/yes/on as booleans: mixed_precision=no arrives as False.
            spelled = [a for a in args if isinstance(a, str) and yaml.safe_load(a) is value]
            if len(spelled) == 1:
                return spelled[0]
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value if value is not None else {}, prefix=name + ".")
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [value] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r} (pass e.g. {name}=[1,2])")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_coerce_type(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce_type(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce_type(v, vt, f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; YAML 1.2 and Python read a number
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(str(value))
    raise ConfigError(f"{name}: unsupported option type {tp!r}")


def _check_meta(value: Any, name: str, meta: typing.Mapping[str, Any]) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v not in choices:
                raise ConfigError(f"{name}: {v!r} is not allowed; choose one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{name}: {value!r} is out of range; pass a value >= {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{name}: {value!r} is out of range; pass a value <= {hi}")
    multiple = meta.get("multiple_of")
    if multiple and isinstance(value, int) and value % multiple:
        raise ConfigError(f"{name}: {value!r} must be a multiple of {multiple}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)}]"
    return getattr(tp, "__name__", str(tp))


def closest(word: str, options: list[str]) -> str | None:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return match[0] if match else None
