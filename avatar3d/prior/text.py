"""The text-to-avatar stage: a text prompt in, a 3D avatar out (docs/method.md section 6).

``run_text_to_avatar(TextToAvatarConfig)`` is what ``avatar3d text-to-avatar`` calls:

1. read the prompt's attribute phrases against the attribute vocabulary
   (``prompts/attributes.yaml``): :func:`match_attributes` -> ``{category: value}`` plus the
   phrases it could not place (kept in the prompt, never dropped);
2. build the view-aware *front* prompt around the user's words with
   :func:`avatar3d.prompts.build_prompt` (style, subject, "front view, facing the camera", the
   user's prompt) and the front view's negative prompt;
3. paint ONE front view (yaw 0, pitch 0) with the configured painter of :mod:`avatar3d.datagen`:
   SD + ControlNet (``pipeline.preset`` sd15 or tiny) from the front camera's OpenPose / depth
   guidance, or the procedural painter (``procedural``), whose avatar takes the mapped attributes
   exactly as a dataset row with those attributes would;
4. hand the painting to the image-to-avatar pipeline (prior -> w -> generator) and write the
   views, turntable, ``w.npy`` and mesh with :func:`avatar3d.prior.avatar.write_avatar`, plus
   ``painted_front.png`` and ``text_to_avatar.json`` (the prompt, what painted it, what was mapped).

With the procedural painter the painted image is right by construction (the mapping sets its
parameters), whatever the prior and the GAN do: judge the *avatar's* renders, not the painting
(``evaluation/text_to_avatar/``).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from avatar3d.atomic import atomic_write
from avatar3d.config import ConfigError, to_dict, writable_dir
from avatar3d.datagen.procedural import PAINTER_ID, ProceduralOptions, identity_for, paint, plan_paint
from avatar3d.prompts import AttributeCategory, build_prompt, load_attributes
from avatar3d.prior.text_config import TextToAvatarConfig
from avatar3d.scene.avatar import AvatarIdentity
from avatar3d.scene.cameras import camera_label

SUMMARY_JSON = "text_to_avatar.json"
PAINTED_PNG = "painted_front.png"
FRONT_YAW, FRONT_PITCH = 0.0, 0.0
PROCEDURAL_PAINTER = "procedural painter"
DIFFUSION_PAINTER = "diffusion model"

# --------------------------------------------------------------------------- prompt -> attributes

# Words around a vocabulary value that a prompt may leave out ("wearing a baseball cap" -> "baseball cap").
_LEAD = re.compile(r"^(wearing (a |an )?|hair in an? )")
# A few spellings and short forms the vocabulary writes one way (alias -> the vocabulary's value).
_EXTRA_ALIASES = {
    "hairstyle": {"afro hairstyle": ["afro"], "hair in a messy bun": ["bun", "hair bun"],
                  "braided hair": ["braids"], "undercut with shaved sides": ["undercut"],
                  "long straight hair": ["long hair", "straight hair"], "short curly hair": ["curly hair"],
                  "wavy shoulder-length hair": ["wavy hair"], "buzz cut": ["buzzcut", "shaved head"]},
    "hair_color": {"blonde hair": ["blond hair", "blonde", "blond"], "grey hair": ["gray hair"],
                   "black hair": ["dark hair"]},
    "eye_color": {"grey eyes": ["gray eyes"]},
    "glasses": {"wearing round glasses": ["glasses", "eyeglasses", "spectacles"],
                "wearing thin-rimmed glasses": ["thin glasses"]},
    "facial_hair": {"full beard": ["beard", "bearded"], "moustache": ["mustache"]},
    "headwear": {"wearing a baseball cap": ["cap"], "wearing a wide-brimmed hat": ["hat"]},
    "earrings": {"small stud earrings": ["earrings", "stud earrings"]},
}
_FILLER = {"a", "an", "the", "with", "and", "of", "who", "has", "having", "wearing", "in", "is", "person", "",
           "her", "his", "their", "very", "some"}


@dataclass(frozen=True)
class AttributeMatch:
    """One attribute phrase found in the prompt."""

    category: str   # e.g. hair_color
    value: str      # the vocabulary's phrase, e.g. "red hair" (what the painter and the prompt builder take)
    text: str       # the words of the prompt that named it, e.g. "red-haired"
    start: int      # where in the prompt


@dataclass
class PromptAttributes:
    """What :func:`match_attributes` read from a prompt."""

    attributes: dict[str, str]            # category -> vocabulary value, in the vocabulary's category order
    matches: list[AttributeMatch]         # one per mapped category, in prompt order
    unmapped: list[str]                   # the prompt's other phrases (kept in the prompt, no attribute)
    conflicts: list[AttributeMatch] = field(default_factory=list)  # a second value for a category: ignored


def _norm(text: str) -> str:
    """Lower case, hyphens and underscores as spaces: the same length, so spans map back to the prompt."""
    return re.sub(r"[-_]", " ", text.lower())


def _aliases(category: AttributeCategory) -> list[tuple[str, str]]:
    """(alias, value) pairs of a category: each value, the value without its lead words, extra spellings."""
    out = []
    extra = _EXTRA_ALIASES.get(category.name, {})
    for value in category.values:
        forms = {_norm(value), _LEAD.sub("", _norm(value))}
        if category.name == "hair_color":
            colour = _norm(value).replace(" dyed", "").removesuffix(" hair")
            forms |= {f"{colour} hair", f"{colour} haired", f"{colour} dyed hair"}
        forms |= {_norm(a) for a in extra.get(value, [])}
        out.extend((form, value) for form in forms if form)
    return out


@lru_cache(maxsize=8)
def _alias_table(categories: tuple[AttributeCategory, ...]) -> tuple[tuple[str, str, str], ...]:
    """(alias, category, value), longest alias first: the most specific phrase wins ("no glasses" before
    "glasses", "pink dyed hair" before "pink hair")."""
    rows = {(alias, c.name, value) for c in categories for alias, value in _aliases(c)}
    return tuple(sorted(rows, key=lambda r: (-len(r[0]), r[0], r[1])))


def match_attributes(prompt: str, categories=None) -> PromptAttributes:
    """The prompt's attribute phrases -> ``{category: value}`` of the attribute vocabulary.

    A phrase matches a vocabulary value, the value without "wearing (a)" / "hair in a", or one of a
    few listed spellings (``blond``, ``gray``, ``red-haired``, a bare ``glasses`` = the vocabulary's
    first kind, round), on word boundaries, case- and hyphen-blind. The longest phrase is read first
    and its words are then used up, so "no glasses" never also reads as "glasses". One value per
    category: the first in the prompt wins, later ones are reported in ``conflicts``. What is left,
    split at commas and "and"/"with", is reported in ``unmapped``.
    """
    cats = tuple(load_attributes(categories))
    text = _norm(prompt)
    used = np.zeros(len(text), dtype=bool)
    found: list[AttributeMatch] = []
    for alias, category, value in _alias_table(cats):
        for m in re.finditer(rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])", text):
            if not used[m.start():m.end()].any():
                used[m.start():m.end()] = True
                found.append(AttributeMatch(category, value, prompt[m.start():m.end()], m.start()))
    found.sort(key=lambda m: m.start)
    chosen: dict[str, AttributeMatch] = {}
    conflicts = []
    for m in found:
        if m.category in chosen:
            conflicts.append(m)
        else:
            chosen[m.category] = m
    order = [c.name for c in cats]
    attributes = {name: chosen[name].value for name in order if name in chosen}
    rest = "".join("," if used[i] else ch for i, ch in enumerate(prompt))
    unmapped = []
    for piece in re.split(r"[,;.:!?()]|\band\b|\bwith\b", rest):
        words = piece.split()
        while words and words[0].lower() in _FILLER:
            words.pop(0)
        while words and words[-1].lower() in _FILLER:
            words.pop()
        if words:
            unmapped.append(" ".join(words))
    return PromptAttributes(attributes=attributes, matches=list(chosen.values()), unmapped=unmapped,
                            conflicts=conflicts)


@lru_cache(maxsize=4096)
def painter_draws(style: str, category: str, value: str, seeds: int = 8) -> bool:
    """Whether the procedural painter's avatar changes when ``{category: value}`` is named (on any of
    ``seeds`` identities): the attributes it has a parameter for (hair colour, glasses, ...) versus those
    it only carries in the prompt (expression, eyebrows, freckles, ...)."""
    return any(identity_for(s, 0, style, {category: value}) != identity_for(s, 0, style, {})
               for s in range(seeds))


# --------------------------------------------------------------------------- painting


@dataclass
class PaintedFront:
    """One painted front view and what painted it."""

    image: np.ndarray                    # (S, S, 3) uint8
    painter: str                         # PROCEDURAL_PAINTER | DIFFUSION_PAINTER
    model: dict                          # model ids (datagen's PipelineConfig.model_ids)
    camera: list[float]                  # the 25-float label painted from
    identity: AvatarIdentity | None = None        # the procedural painter's truth
    guidance: dict[str, np.ndarray] = field(default_factory=dict)  # control images (diffusion)
    seconds: float = 0.0


def front_camera() -> np.ndarray:
    """The front camera (yaw 0, pitch 0) at the dataset's radius and focal."""
    return camera_label(FRONT_YAW, FRONT_PITCH)


def paint_front(cfg: TextToAvatarConfig, front_prompt: str, negative: str, attributes: dict[str, str],
                diffusion_pipe=None) -> PaintedFront:
    """Paint the front view with ``cfg.pipeline``'s painter (``diffusion_pipe``: a pipeline already built)."""
    t0 = time.perf_counter()
    label = front_camera()
    p = cfg.pipeline
    if p.preset == "procedural":
        # Exactly what the dataset job paints for a front spec (seed, index 0) with these attributes; front
        # views have no failure in the painter's ControlNet model, so the plan is the requested camera.
        plan = plan_paint(cfg.seed, 0, cfg.style, attributes, "front", FRONT_YAW, FRONT_PITCH, ProceduralOptions())
        render, painted = paint(plan, label, cfg.resolution)
        return PaintedFront(render.image, PROCEDURAL_PAINTER, p.model_ids(), painted.tolist(), plan.identity,
                            seconds=time.perf_counter() - t0)
    from avatar3d.datagen.job import render_guidance_batch  # the job's own guidance step (imports Ray)
    from avatar3d.datagen.pipeline import build_pipeline, generate_from_config

    kinds = p.controlnet_kinds
    batch = {"id": np.array(["front"]), "seed": np.array([cfg.seed]), "prompt": np.array([front_prompt]),
             "negative_prompt": np.array([negative]), "camera": [label]}
    controls = render_guidance_batch(batch, cfg.resolution, kinds)
    pipe = diffusion_pipe if diffusion_pipe is not None else build_pipeline(p)
    image = generate_from_config(pipe, p, [front_prompt], [negative], [list(controls[f"control_{k}"]) for k in kinds],
                                 [cfg.seed], cfg.resolution, cfg.resolution)[0]
    return PaintedFront(image, DIFFUSION_PAINTER, p.model_ids(), label.tolist(),
                        guidance={k: controls[f"control_{k}"][0] for k in kinds}, seconds=time.perf_counter() - t0)


def painter_description(cfg: TextToAvatarConfig) -> str:
    p = cfg.pipeline
    if p.preset == "procedural":
        return (f"{PROCEDURAL_PAINTER} ({PAINTER_ID}): a parametric avatar rendered on the CPU, no diffusion "
                "model; the prompt's mapped attributes set its parameters")
    ids = p.model_ids()
    weights = "tiny random weights, a test preset" if p.preset == "tiny" else "real weights"
    return (f"{DIFFUSION_PAINTER}: Stable Diffusion + ControlNet ({ids['base_model']}; "
            f"{', '.join(ids['controlnets'])}; {weights}), {p.steps} {p.scheduler} steps, guidance scale "
            f"{p.guidance_scale:g}, {p.guidance} guidance from the front camera")


# --------------------------------------------------------------------------- the stage


@dataclass
class TextToAvatarResult:
    """Everything one call made (the chain and the report read it)."""

    output_dir: Path
    prompt: str                          # the user's prompt
    front_prompt: str                    # the view-aware front prompt built around it
    negative_prompt: str
    style: str
    painter: str                         # PROCEDURAL_PAINTER | DIFFUSION_PAINTER
    painter_description: str
    attributes: dict[str, str]           # mapped: category -> vocabulary value
    painted_attributes: list[str]        # the mapped categories the painter draws (procedural painter)
    unmapped: list[str]                  # phrases kept in the prompt that set no attribute
    painted_image: Path
    yaws: list[float]
    views: list[Path]                    # one PNG per yaw
    views_strip: Path
    turntable: Path | None
    mesh: Path | None
    summary_json: Path
    w: np.ndarray
    identity: AvatarIdentity | None      # the procedural painter's truth of the painted front view
    files: list[Path]
    seconds: dict[str, float]

    def summary(self) -> str:
        mapped = ", ".join(f"{k}={v!r}" for k, v in self.attributes.items()) or "none"
        lines = [f"painted by: {self.painter_description}",
                 f"front prompt: {self.front_prompt}",
                 f"mapped attributes: {mapped}",
                 f"unmapped phrases (kept in the prompt): {', '.join(map(repr, self.unmapped)) or 'none'}",
                 f"painted front view: {self.painted_image}",
                 f"{len(self.views)} views, turntable {self.turntable or '-'}, mesh {self.mesh or '-'} in "
                 f"{self.output_dir}"]
        return "\n".join(lines)


def refuse_existing(output_dir, overwrite: bool, field: str = "output_dir") -> None:
    """A folder that already holds files is kept unless ``overwrite``: one line naming a file found."""
    out = Path(output_dir)
    if out.is_dir() and not overwrite:
        found = next(iter(sorted(out.iterdir())), None)
        if found is not None:
            raise ConfigError(f"{field}: {found} already exists (an earlier result); pass --overwrite to write "
                              f"into {out}, or another {field}")
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"{field}: {out} is a file; pass a folder")


def front_prompt_for(cfg: TextToAvatarConfig):
    """The view-aware front prompt around the user's words: style, subject, front view, the prompt."""
    return build_prompt(cfg.style_entry(), FRONT_YAW, FRONT_PITCH, {"description": " ".join(cfg.prompt.split())})


def run_text_to_avatar(cfg: TextToAvatarConfig, avatar_pipeline=None, diffusion_pipe=None) -> TextToAvatarResult:
    """Prompt -> painted front view -> prior w -> views, turntable, mesh in ``cfg.output_dir``.

    ``avatar_pipeline`` / ``diffusion_pipe``: already-loaded pipelines to reuse over many prompts
    (the measurement does); by default they are loaded from ``cfg``.
    """
    from avatar3d.prior.avatar import load_pipeline, made_by, save_png, view_yaws, write_avatar

    cfg.validate()
    refuse_existing(cfg.output_dir, cfg.overwrite)
    writable_dir(cfg.output_dir, "output_dir", create=False)
    seconds = {}

    # 1-2. Attributes and the front prompt.
    read = match_attributes(cfg.prompt)
    prompt = front_prompt_for(cfg)

    # 3. Paint the front view.
    painted = paint_front(cfg, prompt.prompt, prompt.negative_prompt, read.attributes, diffusion_pipe)
    seconds["paint"] = painted.seconds

    # 4. The prior and the generator.
    t0 = time.perf_counter()
    pipe = avatar_pipeline or load_pipeline(cfg.prior, cfg.generator or None, cfg.tracking_uri or None)
    seconds["load"] = time.perf_counter() - t0
    out = writable_dir(cfg.output_dir, "output_dir")
    painted_path = save_png(painted.image, out / PAINTED_PNG)
    guidance_paths = [save_png(image, out / f"guidance_{kind}.png") for kind, image in painted.guidance.items()]

    # 5. Image -> w -> views, turntable, mesh.
    t0 = time.perf_counter()
    result = pipe(painted.image, seed=cfg.seed, guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.steps,
                  sampler=cfg.sampler, yaws=view_yaws(cfg.views), pitches=cfg.pitch,
                  turntable_frames=cfg.turntable_frames, truncation_psi=cfg.truncation_psi)
    result.meta.update(made_by(cfg))
    files = write_avatar(result, out, pipe.generator, cfg.mesh_resolution, str(painted_path), cfg.mesh_iso)
    seconds["avatar"] = time.perf_counter() - t0

    views = files[:len(result.yaws)]
    turntable = out / "turntable.gif" if (out / "turntable.gif") in files else None
    mesh = out / "mesh.ply" if (out / "mesh.ply") in files else None
    procedural = cfg.pipeline.preset == "procedural"
    drawn = [k for k, v in read.attributes.items() if procedural and painter_draws(cfg.style, k, v)]
    description = painter_description(cfg)
    summary = {
        "prompt": cfg.prompt, "front_prompt": prompt.prompt, "negative_prompt": prompt.negative_prompt,
        "style": cfg.style, "view": prompt.view, "camera": {"yaw": FRONT_YAW, "pitch": FRONT_PITCH,
                                                           "label": painted.camera},
        "painted_by": painted.painter, "painter": description, "models": painted.model,
        "pipeline": cfg.pipeline.to_dict(), "resolution": cfg.resolution, "seed": cfg.seed,
        "attributes": read.attributes,
        "matches": [asdict(m) for m in read.matches],
        "ignored_second_values": [asdict(m) for m in read.conflicts],
        "unmapped_phrases": read.unmapped,
        "painted_attributes": drawn if procedural else None,
        "not_painted_attributes": [k for k in read.attributes if k not in drawn] if procedural else None,
        "painter_identity": json.loads(painted.identity.to_json()) if painted.identity else None,
        "prior": cfg.prior, "generator": cfg.generator or None,
        "outputs": {"painted_image": str(painted_path), "guidance": [str(p) for p in guidance_paths],
                    "views": [str(v) for v in views], "views_strip": str(out / "views.png"),
                    "turntable": str(turntable) if turntable else None, "mesh": str(mesh) if mesh else None,
                    "w": str(out / "w.npy"), "avatar_json": str(files[-1])},
        "seconds": seconds, "config": to_dict(cfg),
    }
    summary_path = atomic_write(out / SUMMARY_JSON, json.dumps(summary, indent=2))
    return TextToAvatarResult(
        output_dir=out, prompt=cfg.prompt, front_prompt=prompt.prompt, negative_prompt=prompt.negative_prompt,
        style=cfg.style, painter=painted.painter, painter_description=description, attributes=read.attributes,
        painted_attributes=drawn, unmapped=read.unmapped, painted_image=painted_path, yaws=list(result.yaws),
        views=views, views_strip=out / "views.png", turntable=turntable, mesh=mesh, summary_json=summary_path,
        w=result.w[0].numpy(), identity=painted.identity,
        files=[painted_path, *guidance_paths, *files, summary_path], seconds=seconds)
