"""Text prompts for the multi-view avatar data (docs/method.md section 2).

A prompt is ``style part, subject, view part, attribute part``, with a
view-aware negative prompt:

* style part: one of 50 built-in styles (``styles.yaml``) or the user's own;
* subject: "a head-and-shoulders avatar of a person";
* view part: from the camera yaw/pitch ("front view, facing the camera",
  "side view, profile, facing left", "back of the head, view from behind",
  plus "seen from above/below" for steep pitches);
* attribute part: ``k`` (default 5) of the 20 facial attribute categories
  (``attributes.yaml``), one value each. Back views only use categories that
  can be seen from behind (hair, headwear, clothes, ...): asking for "blue
  eyes" on a back view makes the diffusion model paint a face there.

The view part comes right after the subject (docs/method.md's order: style, view,
attributes) so that it is never lost to CLIP's 77-token truncation and keeps
the weight of an early phrase. The negative prompt names the face parts for
back views, which is what stops faces being painted on the back of the head.

Reproducibility: sample ``i`` of a set depends only on ``(seed, i)`` -- its
generator is ``np.random.default_rng([seed, i])`` -- never on how many samples
are drawn, so a dataset can be resumed or extended shard by shard. Styles are
assigned round-robin, ``styles[i % len(styles)]``, so any N samples cover the
styles evenly (counts differ by at most one), as in the paper's dataset.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from avatar3d.scene.cameras import CameraSampler, wrap_degrees
from avatar3d.scene.pose_bins import VIEW_GROUPS, view_group

SUBJECT = "a head-and-shoulders avatar of a person"

# Always in the negative prompt. Nothing here may name a face part: front
# views must stay free to show the face.
BASE_NEGATIVE = (
    "low quality", "worst quality", "blurry", "deformed", "disfigured", "bad anatomy",
    "extra heads", "two heads", "multiple people", "extra limbs", "cropped", "watermark", "text",
)
# What cannot be seen from behind; the fix for faces on the back of the head.
BACK_NEGATIVE = ("face", "eyes", "nose", "mouth", "facial features")
# Side views drift towards a frontal face turned on a profile body.
SIDE_NEGATIVE = ("frontal face", "two eyes visible")

# Elevation (degrees) beyond which the view part says "seen from above/below".
STEEP_PITCH_DEG = 15.0

_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
_TEXT_SUFFIXES = (".txt",)
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Style:
    """An avatar style: ``name`` is the id stored per image, ``text`` goes into the prompt."""

    name: str
    text: str


@dataclass(frozen=True)
class AttributeCategory:
    """A facial attribute category, e.g. hairstyle, with the phrases it can take."""

    name: str
    values: tuple[str, ...]
    visible_from_back: bool


@dataclass(frozen=True)
class Prompt:
    """A positive/negative prompt pair and what it was built from."""

    prompt: str
    negative_prompt: str
    style: str  # Style.name
    view: str  # "front" | "side" | "back"
    attributes: dict[str, str] = field(default_factory=dict)  # category -> value


@dataclass(frozen=True)
class PromptSample:
    """One row of a prompt set: the prompt plus the camera and the per-sample seed.

    ``seed`` is the seed for everything random downstream of the prompt (the
    diffusion noise); it is derived from (master seed, index) like the rest.
    """

    index: int
    seed: int
    style: str
    view: str
    yaw: float
    pitch: float
    prompt: str
    negative_prompt: str
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (Python ints, floats, strs)."""
        return asdict(self)


# --------------------------------------------------------------------------- loading


def _data_file(name: str):
    return resources.files(__package__).joinpath(name)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48].rstrip("_")
    if not slug or not slug[0].isalpha():
        slug = f"style_{slug}".rstrip("_")
    return slug


def _read_yaml(path: Path, field_name: str, hint: str):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        detail = str(exc).replace("\n", " ")
        raise ValueError(f"{field_name}: cannot parse YAML file {path} ({detail}); pass {hint}") from None


def _resolve_file(path, field_name: str, hint: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in _TEXT_SUFFIXES + _YAML_SUFFIXES:
        raise ValueError(f"{field_name}: unsupported file type {str(path)!r}; pass {hint}")
    if not path.is_file():
        raise ValueError(f"{field_name}: file not found: {str(path)!r}; pass {hint}")
    return path


_STYLES_HINT = ("a .yaml file (a list of style texts, or `styles:` entries with `name` and `text`), "
                "a .txt file with one style per line, or a non-empty list of distinct strings")


def _style_from_item(item, where: str) -> Style:
    if isinstance(item, Style):
        return item
    if isinstance(item, str):
        text = item.strip()
        return Style(name=_slug(text), text=text)
    if isinstance(item, Mapping) and "text" in item:
        text = str(item["text"]).strip()
        name = item.get("name")
        return Style(name=_slug(text) if name is None else str(name), text=text)
    raise ValueError(f"styles: {where} is {item!r}; each style must be a string or a mapping with `text` "
                     f"(and optional snake_case `name`)")


@lru_cache(maxsize=1)
def _builtin_styles() -> tuple[Style, ...]:
    data = yaml.safe_load(_data_file("styles.yaml").read_text(encoding="utf-8"))
    return tuple(_validate_styles(data["styles"], source="built-in styles.yaml"))


def load_styles(path_or_list=None, field: str = "styles") -> list[Style]:
    """The avatar styles: the 50 built-ins, or the user's own.

    ``path_or_list``: None (built-ins); a ``.yaml``/``.yml`` file holding a list
    of style texts, a list of ``{name, text}`` mappings or a mapping with a
    ``styles:`` key; a ``.txt`` file with one style text per line (blank lines
    and ``#`` comments skipped); or a list of strings / :class:`Style`.
    Styles given as bare text get a snake_case name made from the text.
    Raises ValueError (naming ``styles``) for an empty list, duplicate names or
    texts, a missing file or an unsupported file type.
    """
    if path_or_list is None:
        return list(_builtin_styles())
    if isinstance(path_or_list, (str, os.PathLike)):
        path = _resolve_file(path_or_list, field, _STYLES_HINT)
        if path.suffix.lower() in _TEXT_SUFFIXES:
            lines = path.read_text(encoding="utf-8").splitlines()
            items = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        else:
            data = _read_yaml(path, field, _STYLES_HINT)
            items = data.get("styles") if isinstance(data, Mapping) else data
        return _validate_styles(items, source=str(path))
    if isinstance(path_or_list, Sequence):
        return _validate_styles(path_or_list, source="the given list")
    raise ValueError(f"styles: got a {type(path_or_list).__name__}; pass None for the built-ins, {_STYLES_HINT}")


def _validate_styles(items, source: str) -> list[Style]:
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise ValueError(f"styles: {source} holds {type(items).__name__}, not a list; pass {_STYLES_HINT}")
    if len(items) == 0:
        raise ValueError(f"styles: {source} is empty; pass {_STYLES_HINT}")
    styles = [_style_from_item(item, f"entry {i} of {source}") for i, item in enumerate(items)]
    names: dict[str, int] = {}
    texts: dict[str, int] = {}
    for i, style in enumerate(styles):
        if not style.text:
            raise ValueError(f"styles: entry {i} of {source} has an empty text; pass a non-empty style text")
        if not _SNAKE_CASE.match(style.name):
            raise ValueError(f"styles: entry {i} of {source} has name {style.name!r}; pass a snake_case id "
                             f"(lower-case letters, digits, underscores, starting with a letter)")
        key = style.text.lower()
        for seen, value, what in ((names, style.name, "name"), (texts, key, "text")):
            if value in seen:
                raise ValueError(f"styles: entries {seen[value]} and {i} of {source} share the {what} "
                                 f"{value!r}; pass distinct styles")
            seen[value] = i
    return styles


_ATTRIBUTES_HINT = ("a .yaml file with a `categories:` list whose entries have a snake_case `name`, "
                    "a non-empty list of distinct `values` and a boolean `visible_from_back`")


@lru_cache(maxsize=1)
def _builtin_attributes() -> tuple[AttributeCategory, ...]:
    data = yaml.safe_load(_data_file("attributes.yaml").read_text(encoding="utf-8"))
    return tuple(_validate_attributes(data, source="built-in attributes.yaml"))


def load_attributes(path=None) -> list[AttributeCategory]:
    """The facial attribute categories: the 20 built-ins, or a user's YAML file.

    The file holds ``categories:`` (or is directly a list) of mappings with
    ``name``, ``values`` and ``visible_from_back``. A list of
    :class:`AttributeCategory` is accepted as is. Raises ValueError naming
    ``attributes`` on a missing file or malformed entries.
    """
    if path is None:
        return list(_builtin_attributes())
    if isinstance(path, Sequence) and not isinstance(path, (str, bytes)):
        return _validate_attributes(list(path), source="the given list")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"attributes: got a {type(path).__name__}; pass None for the built-ins or {_ATTRIBUTES_HINT}")
    resolved = _resolve_file(path, "attributes", _ATTRIBUTES_HINT)
    if resolved.suffix.lower() not in _YAML_SUFFIXES:
        raise ValueError(f"attributes: unsupported file type {resolved.name!r}; pass {_ATTRIBUTES_HINT}")
    return _validate_attributes(_read_yaml(resolved, "attributes", _ATTRIBUTES_HINT), source=str(resolved))


def _validate_attributes(data, source: str) -> list[AttributeCategory]:
    items = data.get("categories") if isinstance(data, Mapping) else data
    if not isinstance(items, list) or not items:
        raise ValueError(f"attributes: {source} has no categories; pass {_ATTRIBUTES_HINT}")
    out: list[AttributeCategory] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, AttributeCategory):
            item = {"name": item.name, "values": list(item.values), "visible_from_back": item.visible_from_back}
        where = f"category {i} of {source}"
        if not isinstance(item, Mapping):
            raise ValueError(f"attributes: {where} is {item!r}; pass {_ATTRIBUTES_HINT}")
        name, values, back = item.get("name"), item.get("values"), item.get("visible_from_back")
        if not isinstance(name, str) or not _SNAKE_CASE.match(name):
            raise ValueError(f"attributes: {where} has name {name!r}; pass a snake_case id")
        if name in seen:
            raise ValueError(f"attributes: {where} repeats the name {name!r}; pass distinct category names")
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, str) and v.strip() for v in values)
                or len({v.strip() for v in values}) != len(values)):
            raise ValueError(f"attributes: {where} ({name}) has values {values!r}; "
                             f"pass a non-empty list of distinct non-empty strings")
        if not isinstance(back, bool):
            raise ValueError(f"attributes: {where} ({name}) has visible_from_back={back!r}; pass true or false")
        seen.add(name)
        out.append(AttributeCategory(name=name, values=tuple(v.strip() for v in values), visible_from_back=back))
    return out


# --------------------------------------------------------------------------- prompt parts


def _finite(value, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{field_name}: got {value!r}; pass a finite angle in degrees")
    return float(value)


def _check_view(view: str) -> str:
    if view not in VIEW_GROUPS:
        raise ValueError(f"view: got {view!r}; pass one of {', '.join(VIEW_GROUPS)}")
    return view


def view_phrase(yaw: float, pitch: float, steep_pitch: float = STEEP_PITCH_DEG) -> str:
    """The view part of the prompt for a camera at ``yaw``/``pitch`` (degrees).

    Front/side/back comes from :func:`avatar3d.scene.pose_bins.view_group`.
    Side views name the way the face points in the image: yaw > 0 puts the
    camera on the subject's left, where the face points to image-left.
    """
    yaw, pitch = _finite(yaw, "yaw"), _finite(pitch, "pitch")
    view = view_group(yaw)
    if view == "front":
        phrase = "front view, facing the camera"
    elif view == "side":
        phrase = "side view, profile, facing " + ("left" if wrap_degrees(yaw) > 0 else "right")
    else:
        phrase = "back of the head, view from behind"
    if pitch > steep_pitch:
        phrase += ", seen from above"
    elif pitch < -steep_pitch:
        phrase += ", seen from below"
    return phrase


def negative_prompt(view: str) -> str:
    """The negative prompt for a view group: the base list plus what that view must not show."""
    extra = {"front": (), "side": SIDE_NEGATIVE, "back": BACK_NEGATIVE}[_check_view(view)]
    return ", ".join(BASE_NEGATIVE + extra)


def sample_attributes(rng: np.random.Generator, categories: Sequence[AttributeCategory], k: int = 5,
                      view: str = "front") -> dict[str, str]:
    """``k`` distinct categories with one value each, as {category: value}.

    Back views draw only from categories visible from behind (all of them if
    fewer than ``k`` are). The result follows the categories' file order, so
    the attribute part of a prompt reads the same way every time.
    """
    _check_view(view)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= len(categories):
        raise ValueError(f"k: got {k!r}; pass an integer number of attributes between 0 and {len(categories)}")
    pool = [c for c in categories if view != "back" or c.visible_from_back]
    chosen = np.sort(rng.choice(len(pool), size=min(int(k), len(pool)), replace=False))
    return {pool[i].name: pool[i].values[int(rng.integers(len(pool[i].values)))] for i in chosen}


def build_prompt(style: Style | str, yaw: float, pitch: float, attributes: Mapping[str, str] | None = None,
                 subject: str = SUBJECT) -> Prompt:
    """Assemble ``style, subject, view, attributes`` and the view's negative prompt. Deterministic."""
    if isinstance(style, str):
        style = Style(name=_slug(style), text=style.strip())
    if not isinstance(style, Style) or not style.text:
        raise ValueError(f"style: got {style!r}; pass a Style from load_styles() or a non-empty style text")
    attributes = dict(attributes or {})
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in attributes.items()):
        raise ValueError(f"attributes: got {attributes!r}; pass a dict of category name -> value phrase")
    view = view_group(_finite(yaw, "yaw"))
    parts = [style.text, subject, view_phrase(yaw, pitch), *attributes.values()]
    return Prompt(prompt=", ".join(parts), negative_prompt=negative_prompt(view), style=style.name,
                  view=view, attributes=attributes)


# --------------------------------------------------------------------------- prompt sets


def _index_like(value, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{field_name}: got {value!r}; pass a non-negative integer")
    return int(value)


def sample_prompt(index: int, seed: int, styles: Sequence[Style], categories: Sequence[AttributeCategory],
                  camera_sampler: CameraSampler, k: int = 5) -> PromptSample:
    """Sample ``index`` of the set with master ``seed``: a function of (seed, index) only.

    Draw order from the per-sample generator: downstream seed, camera, then
    attributes -- so changing ``k`` or the attribute list leaves the camera
    and the seed of every sample unchanged.
    """
    rng = np.random.default_rng([seed, index])
    sample_seed = int(rng.integers(0, 2**31 - 1))
    yaw, pitch, _ = camera_sampler.sample(rng)
    yaw, pitch = float(yaw), float(pitch)
    view = view_group(yaw)
    attributes = sample_attributes(rng, categories, k=k, view=view)
    prompt = build_prompt(styles[index % len(styles)], yaw, pitch, attributes)
    return PromptSample(index=index, seed=sample_seed, style=prompt.style, view=view, yaw=yaw, pitch=pitch,
                        prompt=prompt.prompt, negative_prompt=prompt.negative_prompt,
                        attributes=prompt.attributes)


def sample_prompts(n: int, seed: int, styles=None, attributes=None, camera_sampler: CameraSampler | None = None,
                   k: int = 5, start: int = 0) -> list[PromptSample]:
    """Samples ``start .. start + n - 1`` of the prompt set with master ``seed``.

    ``styles``: anything :func:`load_styles` takes (None = the 50 built-ins).
    ``attributes``: anything :func:`load_attributes` takes (None = built-ins).
    ``camera_sampler``: default yaw in [-180, 180], pitch in [-30, 30].
    Sample i uses style ``styles[i % len(styles)]`` (even coverage) and its
    own generator ``default_rng([seed, i])``, so sample i is the same whatever
    ``n`` and ``start`` are: sets can be resumed and extended.
    """
    n, seed, start = _index_like(n, "n"), _index_like(seed, "seed"), _index_like(start, "start")
    style_list = load_styles(styles)
    categories = load_attributes(attributes)
    sampler = camera_sampler or CameraSampler()
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= len(categories):
        raise ValueError(f"k: got {k!r}; pass an integer number of attributes between 0 and {len(categories)}")
    return [sample_prompt(i, seed, style_list, categories, sampler, k) for i in range(start, start + n)]


# --------------------------------------------------------------------------- display


def format_prompt_table(samples: Sequence[PromptSample], width: int = 100) -> str:
    """A terminal-readable listing: one block per sample, long lines wrapped."""
    blocks = []
    for s in samples:
        head = f"#{s.index}  style={s.style}  view={s.view}  yaw={s.yaw:+.2f}  pitch={s.pitch:+.2f}  seed={s.seed}"
        lines = textwrap.wrap(head, width=width, subsequent_indent=" " * 4, break_on_hyphens=False)
        for label, text in (("prompt", s.prompt), ("negative", s.negative_prompt),
                            ("attributes", "; ".join(f"{k}={v}" for k, v in s.attributes.items()) or "-")):
            lines.extend(textwrap.wrap(text, width=width, initial_indent=f"  {label + ':':<12}",
                                       subsequent_indent=" " * 14, break_on_hyphens=False,
                                       break_long_words=False) or [f"  {label}:"])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def prompts_report(n: int = 10, seed: int = 0, styles=None, attributes=None, k: int = 5, start: int = 0,
                   as_json: bool = False) -> str:
    """What ``avatar3d prompts`` prints: the table, or a JSON list of sample dicts."""
    samples = sample_prompts(n, seed, styles=styles, attributes=attributes, k=k, start=start)
    if as_json:
        return json.dumps([s.to_dict() for s in samples], indent=2, ensure_ascii=False)
    return format_prompt_table(samples)
