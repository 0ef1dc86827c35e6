"""The procedural painter: a third way to paint the dataset, with known truth (docs/method.md section 9).

``pipeline.preset: procedural`` swaps Stable Diffusion + ControlNet for
:func:`avatar3d.scene.avatar.render_avatar`: each spec (style, attributes,
camera) becomes an :class:`~avatar3d.scene.avatar.AvatarIdentity` drawn from
``(seed, index)`` (attributes the prompt names decide the matching parameters,
the rest are drawn), painted from the spec's camera, *except* where the
failure model says ControlNet would have missed:

* side views (``view == "side"``): with probability ``side_error_rate`` the
  painted camera is off by a Gaussian yaw error of ``side_yaw_error_deg`` and
  a pitch error of ``side_pitch_error_deg`` (standard deviations), which moves
  the image into another fine pose bin but mostly keeps the coarse one;
* back views: with probability ``back_janus_rate`` a Janus head (the face
  painted on the back of the head), else with probability ``back_flip_rate``
  the view flipped towards the front (yaw -> +-(180 - |yaw|): the front of the
  head while the label says back).

The dataset's label columns (``camera``, ``yaw``, ``pitch``, bins) stay the
*requested* camera, as with real ControlNet data; the nullable truth columns
(:data:`avatar3d.datagen.schema.TRUTH_FIELDS`) say what was really painted, so
:func:`repaint` gives the same pixels again from a row alone. Every rate set to
``0`` turns its failure off.

Plain numpy + PIL; no Ray (the job wraps :class:`ProceduralPainter` in its actor pool).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from avatar3d.config import ConfigError
from avatar3d.datagen.dataset import encode_png
from avatar3d.scene.avatar import (
    FACIAL_HAIR,
    GLASSES,
    HAIR_STYLES,
    HATS,
    NECKWEAR,
    STYLE_MONO,
    AvatarIdentity,
    render_avatar,
    style_family,
)
from avatar3d.scene.cameras import camera_label, split_label, wrap_degrees

PAINTER_ID = "avatar3d/procedural-painter-v1"
FAILURES = ("none", "pose_error", "janus", "flip")
_IDENTITY_STREAM = 0x1D
_FAILURE_STREAM = 0xFA11


@dataclass
class ProceduralOptions:
    """ControlNet's failure modes as the procedural painter models them (0 turns each off)."""

    side_error_rate: float = field(default=0.5, metadata={
        "help": "share of side views painted from a wrong camera", "min": 0.0, "max": 1.0})
    side_yaw_error_deg: float = field(default=20.0, metadata={
        "help": "std of the yaw error of those side views (degrees)", "min": 0.0, "max": 90.0})
    side_pitch_error_deg: float = field(default=8.0, metadata={
        "help": "std of their pitch error (degrees)", "min": 0.0, "max": 45.0})
    back_janus_rate: float = field(default=0.2, metadata={
        "help": "share of back views painted as a Janus head (a face on the back)", "min": 0.0, "max": 1.0})
    back_flip_rate: float = field(default=0.1, metadata={
        "help": "share of back views painted from the mirrored front camera", "min": 0.0, "max": 1.0})

    def validate(self) -> "ProceduralOptions":
        if self.back_janus_rate + self.back_flip_rate > 1.0:
            raise ConfigError(f"procedural.back_janus_rate + procedural.back_flip_rate = "
                              f"{self.back_janus_rate + self.back_flip_rate:g} > 1: pass rates that sum to <= 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- attributes -> identity

_HAIR_WORDS = (("curly", "curly"), ("long straight", "long"), ("wavy", "wavy"), ("buzz", "buzz"),
               ("undercut", "undercut"), ("ponytail", "ponytail"), ("braid", "braids"), ("bun", "bun"),
               ("afro", "afro"), ("mohawk", "mohawk"), ("bald", "bald"), ("long", "long"), ("short", "short"))
_HAIR_COLOURS = {"black": (0.08, 0.07, 0.07), "brown": (0.33, 0.21, 0.12), "blonde": (0.90, 0.77, 0.42),
                 "red": (0.68, 0.24, 0.10), "grey": (0.60, 0.60, 0.60), "white": (0.92, 0.92, 0.90),
                 "pink": (0.95, 0.50, 0.72), "blue": (0.25, 0.45, 0.90)}
_EYE_COLOURS = {"brown": (0.36, 0.22, 0.10), "blue": (0.25, 0.50, 0.85), "green": (0.25, 0.60, 0.30),
                "hazel": (0.55, 0.45, 0.20), "grey": (0.55, 0.58, 0.62)}
_SKIN = {"fair": (0.96, 0.82, 0.74), "light": (0.90, 0.73, 0.62), "olive": (0.76, 0.60, 0.42),
         "tan": (0.78, 0.57, 0.40), "brown": (0.55, 0.37, 0.24), "dark": (0.36, 0.24, 0.16)}
_CLOTH = {"denim": (0.25, 0.36, 0.58), "armour": (0.62, 0.64, 0.66), "suit": (0.16, 0.17, 0.22)}
_PALETTE = ((0.80, 0.20, 0.20), (0.20, 0.50, 0.85), (0.25, 0.65, 0.35), (0.90, 0.75, 0.20), (0.55, 0.30, 0.70),
            (0.95, 0.55, 0.20), (0.20, 0.70, 0.70), (0.90, 0.90, 0.88), (0.15, 0.15, 0.18))
_HATS = (("baseball cap", "cap"), ("beanie", "beanie"), ("wide-brimmed", "wide_brim"), ("headband", "headband"),
         ("crown", "crown"))
_GLASSES = (("sunglasses", "sunglasses"), ("round", "round"), ("square", "square"), ("thin", "thin"))
_FACIAL = (("beard", "beard"), ("stubble", "stubble"), ("moustache", "moustache"), ("goatee", "goatee"))
_NECK = (("scarf", "scarf"), ("necklace", "necklace"), ("bow tie", "bow_tie"), ("choker", "choker"))
_FACE_SHAPES = {"round": dict(head_width=1.08, head_height=0.95, jaw=1.1), "oval": {},
                "square": dict(jaw=1.16), "heart": dict(jaw=0.84, head_width=1.03), "long": dict(head_height=1.08,
                                                                                              head_width=0.93)}
_NOSES = {"small": 0.8, "pointed": 1.05, "button": 0.85, "wide": 1.3, "aquiline": 1.2}
_EYES = {"big round": 1.25, "narrow": 0.8, "almond": 1.0, "hooded": 0.9, "upturned": 1.05}


def _match(text: str | None, table):
    """First option whose keyword the attribute phrase contains (None when the phrase names none)."""
    if not text:
        return None
    low = text.lower()
    for word, value in table:
        if word in low:
            return value
    return None


def _colour(rng, base, jitter=0.04):
    return tuple(float(np.clip(c + rng.uniform(-jitter, jitter), 0.0, 1.0)) for c in base)


def identity_for(seed: int, index: int, style: str, attributes: dict[str, str]) -> AvatarIdentity:
    """The avatar of spec ``(seed, index)``: named attributes decide, the rest is drawn (same draws every time)."""
    rng = np.random.default_rng([int(seed), int(index), _IDENTITY_STREAM])
    a = {k: str(v) for k, v in attributes.items()}
    # Draw everything first, in a fixed order, so that an attribute never shifts the other draws.
    p = dict(
        head_width=rng.uniform(0.92, 1.08), head_height=rng.uniform(0.93, 1.07), head_depth=rng.uniform(0.95, 1.05),
        jaw=rng.uniform(0.88, 1.12), nose=rng.uniform(0.8, 1.25), ears=rng.uniform(0.8, 1.25),
        eye_size=rng.uniform(0.85, 1.2), neck=rng.uniform(0.88, 1.12), shoulders=rng.uniform(0.88, 1.12),
        hair=HAIR_STYLES[rng.integers(len(HAIR_STYLES))], hair_volume=rng.uniform(0.8, 1.25),
        hat=HATS[rng.choice(len(HATS), p=[0.7, 0.08, 0.08, 0.05, 0.05, 0.04])],
        glasses=GLASSES[rng.choice(len(GLASSES), p=[0.7, 0.08, 0.08, 0.07, 0.07])],
        facial_hair=FACIAL_HAIR[rng.choice(len(FACIAL_HAIR), p=[0.7, 0.1, 0.08, 0.06, 0.06])],
        earrings=bool(rng.random() < 0.25),
        neckwear=NECKWEAR[rng.choice(len(NECKWEAR), p=[0.72, 0.08, 0.08, 0.06, 0.06])],
        skin=_colour(rng, list(_SKIN.values())[rng.integers(len(_SKIN))]),
        hair_colour=_colour(rng, list(_HAIR_COLOURS.values())[rng.integers(len(_HAIR_COLOURS))]),
        eye_colour=_colour(rng, list(_EYE_COLOURS.values())[rng.integers(len(_EYE_COLOURS))]),
        lips=_colour(rng, (0.74, 0.40, 0.40), 0.06),
        cloth=_colour(rng, _PALETTE[rng.integers(len(_PALETTE))], 0.06),
        accessory=_colour(rng, _PALETTE[rng.integers(len(_PALETTE))], 0.06),
    )
    p["hair"] = _match(a.get("hairstyle"), _HAIR_WORDS) or p["hair"]
    colour = _match(a.get("hair_color"), [(k, k) for k in _HAIR_COLOURS])
    if colour:
        p["hair_colour"] = _colour(rng, _HAIR_COLOURS[colour])
    colour = _match(a.get("eye_color"), [(k, k) for k in _EYE_COLOURS])
    if colour:
        p["eye_colour"] = _EYE_COLOURS[colour]
    tone = _match(a.get("skin_tone"), [(k, k) for k in _SKIN])
    if tone:
        p["skin"] = _SKIN[tone]
    if "headwear" in a:
        p["hat"] = _match(a["headwear"], _HATS) or "none"
    if "glasses" in a:
        p["glasses"] = _match(a["glasses"], _GLASSES) or "none"
    if "facial_hair" in a:
        p["facial_hair"] = _match(a["facial_hair"], _FACIAL) or "none"
    if "earrings" in a:
        p["earrings"] = "no earrings" not in a["earrings"].lower()
    if "neckwear" in a:
        p["neckwear"] = _match(a["neckwear"], _NECK) or "none"
    shape = _match(a.get("face_shape"), [(k, k) for k in _FACE_SHAPES])
    if shape:
        p.update(_FACE_SHAPES[shape])
    nose = _match(a.get("nose"), list(_NOSES.items()))
    if nose:
        p["nose"] = nose
    eyes = _match(a.get("eye_shape"), list(_EYES.items()))
    if eyes:
        p["eye_size"] = eyes
    cloth = _match(a.get("clothing"), [(k, k) for k in _CLOTH])
    if cloth:
        p["cloth"] = _CLOTH[cloth]
    if "red lipstick" in a.get("makeup", ""):
        p["lips"] = (0.80, 0.08, 0.12)
    if "elderly" in a.get("age", "") and "hair_color" not in a:
        p["hair_colour"] = _colour(rng, _HAIR_COLOURS["grey"])
    p = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in p.items()}
    return AvatarIdentity(family=style_family(style), mono=STYLE_MONO.get(style), **p)


# --------------------------------------------------------------------------- failure model


@dataclass(frozen=True)
class PaintPlan:
    """What the painter really paints for one spec."""

    identity: AvatarIdentity
    yaw: float     # painted camera (degrees)
    pitch: float
    failure: str   # one of FAILURES

    @property
    def janus(self) -> bool:
        return self.failure == "janus"


def plan_paint(seed: int, index: int, style: str, attributes: dict, view: str, yaw: float, pitch: float,
               options: ProceduralOptions) -> PaintPlan:
    """Identity and painted camera of spec ``(seed, index)`` under the failure model."""
    identity = identity_for(seed, index, style, attributes)
    rng = np.random.default_rng([int(seed), int(index), _FAILURE_STREAM])
    u, e_yaw, e_pitch = rng.random(), rng.standard_normal(), rng.standard_normal()
    failure, py, pp = "none", float(yaw), float(pitch)
    if view == "side" and u < options.side_error_rate and (options.side_yaw_error_deg or options.side_pitch_error_deg):
        failure = "pose_error"
        py = float(wrap_degrees(yaw + options.side_yaw_error_deg * e_yaw))
        pp = float(np.clip(pitch + options.side_pitch_error_deg * e_pitch, -60.0, 60.0))
    elif view == "back":
        if u < options.back_janus_rate:
            failure = "janus"
        elif u < options.back_janus_rate + options.back_flip_rate:
            failure = "flip"
            w = float(wrap_degrees(yaw))
            py = float(np.copysign(180.0 - abs(w), w if w != 0 else 1.0))
    return PaintPlan(identity=identity, yaw=py, pitch=pp, failure=failure)


def painted_label(requested_label, yaw: float, pitch: float) -> np.ndarray:
    """The requested camera moved to ``yaw``/``pitch``: same radius and intrinsics."""
    c2w, k = split_label(requested_label)
    radius = float(np.linalg.norm(c2w[:3, 3]))
    return camera_label(yaw, pitch, radius=radius, focal=float(k[0, 0]))


# --------------------------------------------------------------------------- painting


def encode_mask(mask: np.ndarray) -> bytes:
    """Silhouette -> 8-bit greyscale PNG (0 background, 255 avatar)."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) >= 128


def paint(plan: PaintPlan, requested_label, size: int):
    """-> (AvatarRender, the 25-float painted label)."""
    label = painted_label(requested_label, plan.yaw, plan.pitch)
    return render_avatar(plan.identity, label, size, janus=plan.janus), label


def repaint(row: dict, size: int | None = None):
    """A dataset row's truth columns -> the same render again (image, mask)."""
    identity = AvatarIdentity.from_json(row["truth_identity"])
    size = size or int(row["width"])
    return render_avatar(identity, np.asarray(row["truth_camera"]), size, janus=row["truth_failure"] == "janus")


class ProceduralPainter:
    """Ray Data actor (or a plain callable): spec rows -> ``id``, PNG, truth columns, timings."""

    def __init__(self, options: ProceduralOptions, resolution: int):
        self.options = options
        self.resolution = resolution

    def __call__(self, batch: dict) -> dict:
        call_start = time.time()
        out = {k: [] for k in ("image_png", "truth_camera", "truth_yaw", "truth_pitch", "truth_failure",
                               "truth_identity", "truth_silhouette")}
        paint_s = png_s = 0.0
        for i in range(len(batch["id"])):
            t0 = time.perf_counter()
            plan = plan_paint(int(batch["seed"][i]), int(batch["index"][i]), str(batch["style"][i]),
                              json.loads(str(batch["attributes"][i])), str(batch["view"][i]),
                              float(batch["yaw"][i]), float(batch["pitch"][i]), self.options)
            render, label = paint(plan, np.asarray(batch["camera"][i], dtype=np.float64), self.resolution)
            t1 = time.perf_counter()
            out["image_png"].append(encode_png(render.image))
            out["truth_silhouette"].append(encode_mask(render.mask))
            png_s += time.perf_counter() - t1
            paint_s += t1 - t0
            out["truth_camera"].append(label)
            out["truth_yaw"].append(plan.yaw)
            out["truth_pitch"].append(plan.pitch)
            out["truth_failure"].append(plan.failure)
            out["truth_identity"].append(plan.identity.to_json())
        n = len(batch["id"])
        result = {"id": batch["id"]}
        for key in ("image_png", "truth_silhouette", "truth_failure", "truth_identity"):
            result[key] = np.array(out[key], dtype=object)
        result["truth_camera"] = np.stack(out["truth_camera"]) if n else np.zeros((0, 25))
        result["truth_yaw"] = np.array(out["truth_yaw"], dtype=np.float64)
        result["truth_pitch"] = np.array(out["truth_pitch"], dtype=np.float64)
        result.update({
            "guidance_s": np.zeros(n), "diffusion_s": np.full(n, paint_s / max(n, 1)),
            "png_s": np.full(n, png_s / max(n, 1)), "call_start": np.full(n, call_start),
            "call_end": np.full(n, time.time()),
        })
        return result
