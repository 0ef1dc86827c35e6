"""A parametric head-and-shoulders avatar with known 3D truth, and its CPU renderer (docs/method.md section 9).

The procedural world the method is tested in when real Stable Diffusion
weights are out of reach: every avatar is an :class:`AvatarIdentity` (head
proportions, hairstyle, headwear, glasses, facial hair, jewellery, colours and
a shading family) whose surface is a signed distance field in the world frame
of :mod:`avatar3d.scene.cameras` (y up, the subject faces +z, eyes at about
y = +0.06, everything inside EG3D's box [-0.5, 0.5]^3). :func:`render_avatars`
sphere-traces that field for any EG3D camera label, so an identity can be
seen from every camera, and what it really looks like from there is known.

Shading families (:data:`FAMILIES`), chosen per style (``style_family``):

* ``cel``: two-tone diffuse bands and ink outlines at silhouettes, creases and
  material edges (2D styles: anime, comics, illustration),
* ``smooth``: diffuse + specular + rim light (3D animation, games, toys),
* ``metal``: one metal colour for the whole figure, strong highlights and an
  environment term (bronze or gold statues),
* ``matte``: diffuse only with a fine surface texture (clay, felt, knitted,
  carved stone or wood; a single material colour for carvings).

Lighting is fixed in the world (a key light front-left-above, a weaker fill
from behind, a sky/ground ambient), so views of one identity agree with each
other, as the 3D GAN assumes. The background is flat white (:data:`BACKGROUND`):
empty space, for a volume renderer that composites on white (EG3D's
``white_back``, as for its ShapeNet models), so a generator can reproduce it
with no density at all.

A *Janus* render (``janus=True``) mirrors the face onto the back of the head
and trims the hair there: the failure of image diffusion at back views that the
coarse-to-fine discriminator is built for.

Plain numpy; deterministic: the same identity, camera, size and flag give the
same bytes.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass

import numpy as np

from avatar3d.scene.render import pixel_rays

FAMILIES = ("cel", "smooth", "metal", "matte")
HAIR_STYLES = ("bald", "buzz", "short", "curly", "long", "wavy", "ponytail", "bun", "braids", "afro", "mohawk",
               "undercut")
HATS = ("none", "cap", "beanie", "wide_brim", "headband", "crown")
GLASSES = ("none", "round", "square", "sunglasses", "thin")
FACIAL_HAIR = ("none", "beard", "stubble", "moustache", "goatee")
NECKWEAR = ("none", "scarf", "necklace", "bow_tie", "choker")
BACKGROUND = (1.0, 1.0, 1.0)  # white: empty space for a volume renderer that composites on white (white_back)

# Materials, in the order the renderer indexes them.
MATERIALS = ("skin", "eye", "lips", "hair", "cloth", "hat", "glasses", "metal")
_SKIN, _EYE, _LIPS, _HAIR, _CLOTH, _HAT, _GLASSES, _METAL = range(len(MATERIALS))

# Janus: face features are mirrored through this plane (front of the face at z ~ +0.14 -> back of the skull).
_JANUS_Z = -0.02
_BOUND_CENTRE = np.array([0.0, -0.08, 0.0])
_BOUND_RADIUS = 0.62


@dataclass(frozen=True)
class AvatarIdentity:
    """Everything that fixes what an avatar looks like from any camera (world units, RGB in [0, 1])."""

    family: str = "smooth"
    head_width: float = 1.0      # scale factors around a stylised adult head
    head_height: float = 1.0
    head_depth: float = 1.0
    jaw: float = 1.0
    nose: float = 1.0
    ears: float = 1.0
    eye_size: float = 1.0
    neck: float = 1.0
    shoulders: float = 1.0
    hair: str = "short"
    hair_volume: float = 1.0
    hat: str = "none"
    glasses: str = "none"
    facial_hair: str = "none"
    earrings: bool = False
    neckwear: str = "none"
    skin: tuple[float, float, float] = (0.87, 0.69, 0.58)
    hair_colour: tuple[float, float, float] = (0.30, 0.20, 0.12)
    eye_colour: tuple[float, float, float] = (0.35, 0.22, 0.10)
    lips: tuple[float, float, float] = (0.75, 0.38, 0.38)
    cloth: tuple[float, float, float] = (0.25, 0.35, 0.65)
    accessory: tuple[float, float, float] = (0.15, 0.15, 0.18)
    mono: tuple[float, float, float] | None = None  # one material colour for everything (statues, carvings)

    def __post_init__(self):
        for name, options in (("family", FAMILIES), ("hair", HAIR_STYLES), ("hat", HATS), ("glasses", GLASSES),
                              ("facial_hair", FACIAL_HAIR), ("neckwear", NECKWEAR)):
            if getattr(self, name) not in options:
                raise ValueError(f"AvatarIdentity.{name}={getattr(self, name)!r}: pass one of {', '.join(options)}")

    def to_json(self) -> str:
        """Compact JSON; floats are written exactly (repr), so :meth:`from_json` gives the same identity."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "AvatarIdentity":
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"avatar identity: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = tuple(value)
        return cls(**data)


# ------------------------------------------------------------------ SDF pieces (world units)

def _ellipsoid(p, centre, radii):
    """Quilez's bound for an ellipsoid (exact on the surface, a good step size near it)."""
    dx, dy, dz = p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]
    rx, ry, rz = radii
    k0 = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + (dz / rz) ** 2)
    k1 = np.sqrt((dx / rx**2) ** 2 + (dy / ry**2) ** 2 + (dz / rz**2) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _sphere(p, centre, radius):
    return np.sqrt((p[0] - centre[0]) ** 2 + (p[1] - centre[1]) ** 2 + (p[2] - centre[2]) ** 2) - radius


def _capsule(p, a, b, radius):
    ab = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    ll = ab[0] ** 2 + ab[1] ** 2 + ab[2] ** 2
    h = np.clip(((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1] + (p[2] - a[2]) * ab[2]) / ll, 0.0, 1.0)
    return np.sqrt((p[0] - a[0] - h * ab[0]) ** 2 + (p[1] - a[1] - h * ab[1]) ** 2
                   + (p[2] - a[2] - h * ab[2]) ** 2) - radius


def _torus_z(p, centre, major, minor):
    """Torus whose axis is z (a ring facing the camera at yaw 0)."""
    q = np.sqrt((p[0] - centre[0]) ** 2 + (p[1] - centre[1]) ** 2) - major
    return np.sqrt(q**2 + (p[2] - centre[2]) ** 2) - minor


def _torus_y(p, centre, major, minor):
    """Torus whose axis is y (a ring around the head or neck)."""
    q = np.sqrt((p[0] - centre[0]) ** 2 + (p[2] - centre[2]) ** 2) - major
    return np.sqrt(q**2 + (p[1] - centre[1]) ** 2) - minor


def _smooth_union(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _plane(p, normal, offset):
    """Signed distance to the half-space n.p <= offset (negative inside)."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    return p[0] * n[0] + p[1] * n[1] + p[2] * n[2] - offset


# How far the hair stands off the cranium, per hairstyle (times hair_volume); the afro's own shape is a
# sphere, whose half-width at the headband's height stands about 0.08 off.
_HAIR_THICKNESS = {"bald": 0.0, "buzz": 0.006, "undercut": 0.006, "mohawk": 0.006, "curly": 0.035, "afro": 0.08}


def _hair_thickness(ident: AvatarIdentity) -> float:
    return _HAIR_THICKNESS.get(ident.hair, 0.02) * ident.hair_volume


def _eye(ident: AvatarIdentity) -> tuple[tuple[float, float, float], float]:
    """(centre of the left eyeball, its radius); the right one is its mirror in x."""
    return (0.047 * ident.head_width, 0.05, 0.14 * ident.head_depth - 0.018), 0.024 * ident.eye_size


class _Field:
    """The signed distance field of one identity, split by material."""

    def __init__(self, ident: AvatarIdentity, janus: bool = False):
        self.i = ident
        self.janus = janus
        i = ident
        self.crown = (0.0, 0.10, -0.02)
        self.cranium_r = (0.125 * i.head_width, 0.155 * i.head_height, 0.16 * i.head_depth)
        self.face_z = 0.14 * i.head_depth  # front of the face

    # --- parts -------------------------------------------------------------------
    def _face_features(self, p):
        """Skin-coloured features (nose), eyes, lips, brows, in that order."""
        i, fz = self.i, self.face_z
        ax = np.abs(p[0])
        nose = _ellipsoid(p, (0.0, 0.0, fz + 0.012), (0.022 * i.nose, 0.045 * i.nose, 0.030 * i.nose))
        eyes = _sphere((ax, p[1], p[2]), *_eye(i))
        lips = _ellipsoid(p, (0.0, -0.075 * i.head_height, fz - 0.008), (0.036, 0.014, 0.020))
        brows = _ellipsoid((ax, p[1], p[2]), (0.047 * i.head_width, 0.092, fz - 0.005), (0.030, 0.008, 0.014))
        return nose, eyes, lips, brows

    def _mirror(self, p):
        return (p[0], p[1], 2.0 * _JANUS_Z - p[2])

    def parts(self, p):
        """-> list of (sdf, material index)."""
        i = self.i
        ax = np.abs(p[0])
        # Head and neck (skin), smooth-unioned.
        skin = _ellipsoid(p, self.crown, self.cranium_r)
        skin = _smooth_union(skin, _ellipsoid(p, (0.0, -0.03, 0.03),
                                              (0.10 * i.head_width * i.jaw, 0.125 * i.head_height, 0.11 * i.head_depth)),
                             0.04)
        skin = _smooth_union(skin, _sphere(p, (0.0, -0.13 * i.head_height, 0.07), 0.04 * i.jaw), 0.03)
        ear_c = (0.122 * i.head_width, 0.04, -0.01)
        skin = _smooth_union(skin, _ellipsoid((ax, p[1], p[2]), ear_c, (0.016, 0.05 * i.ears, 0.033 * i.ears)), 0.012)
        skin = _smooth_union(skin, _capsule(p, (0.0, -0.08, -0.02), (0.0, -0.30, -0.02), 0.072 * i.neck), 0.03)
        nose, eyes, lips, brows = self._face_features(p)
        if self.janus:
            m = self._mirror(p)
            n2, e2, l2, b2 = self._face_features(m)
            nose, eyes, lips, brows = (np.minimum(nose, n2), np.minimum(eyes, e2), np.minimum(lips, l2),
                                       np.minimum(brows, b2))
        skin = _smooth_union(skin, nose, 0.018)
        out = [(skin, _SKIN), (eyes, _EYE), (lips, _LIPS), (brows, _HAIR)]
        # Shoulders and chest (cloth), cut flat at the bottom of the box.
        body = _ellipsoid(p, (0.0, -0.40, -0.02), (0.30 * i.shoulders, 0.15, 0.14))
        body = np.maximum(body, -(p[1] + 0.49))
        out.append((body, _CLOTH))
        hair = self._hair(p)
        if hair is not None:
            out.append((hair, _HAIR))
        beard = self._facial_hair(p)
        if beard is not None:
            out.append((beard, _HAIR))
        hat = self._hat(p)
        if hat is not None:
            out.append(hat)
        glasses = self._glasses(p)
        if glasses is not None:
            out.append((glasses, _GLASSES))
        if i.earrings:
            out.append((_sphere((ax, p[1], p[2]), (ear_c[0] + 0.004, -0.012, ear_c[2] + 0.012), 0.011), _METAL))
        neck = self._neckwear(p)
        if neck is not None:
            out.append(neck)
        return out

    def _hairline(self, p):
        """Negative where hair may grow: above a plane that rises towards the face (and towards the back, Janus)."""
        front = _plane(p, (0.0, -1.0, 0.8), -0.04)  # inside: y >= 0.04 + 0.8 z
        if self.janus:  # a face at the back too: the hair stops above it
            front = np.maximum(front, _plane(p, (0.0, -1.0, -0.8), -0.04 + 0.8 * 2 * _JANUS_Z))
        return front

    def _hair(self, p):
        i = self.i
        if i.hair == "bald":
            return None
        rx, ry, rz = self.cranium_r
        v = i.hair_volume
        if i.hair == "afro":
            cap = _sphere(p, (0.0, 0.13, -0.03), 0.205 * v)
        else:
            thick = _hair_thickness(i)
            cap = _ellipsoid(p, (0.0, 0.105, -0.025), (rx + thick, ry + thick, rz + thick))
        hair = np.maximum(cap, self._hairline(p))
        if i.hair in ("long", "wavy", "braids"):
            length = {"long": 0.24, "wavy": 0.15, "braids": 0.22}[i.hair]
            width = {"long": 0.15, "wavy": 0.155, "braids": 0.12}[i.hair] * v
            sheet = _ellipsoid(p, (0.0, 0.05 - length / 2, -0.07), (width, length, 0.11))
            sheet = np.maximum(sheet, _plane(p, (0.0, 0.0, 1.0), 0.03 if not self.janus else 1.0))
            if self.janus:
                sheet = np.maximum(sheet, -p[0] ** 2 + 0.11 ** 2)  # only at the sides, the face at the back stays clear
            hair = _smooth_union(hair, sheet, 0.03)
        elif i.hair == "ponytail":
            hair = _smooth_union(hair, _capsule(p, (0.0, 0.12, -0.17), (0.0, -0.12, -0.23), 0.035 * v), 0.02)
        elif i.hair == "bun":
            hair = _smooth_union(hair, _sphere(p, (0.0, 0.24, -0.11), 0.06 * v), 0.02)
        elif i.hair == "mohawk":
            hair = np.minimum(hair, _ellipsoid(p, (0.0, 0.21, -0.03), (0.025, 0.09 * v, 0.17)))
        elif i.hair == "undercut":
            hair = np.minimum(hair, np.maximum(_ellipsoid(p, (0.0, 0.14, -0.01), (0.10, 0.14 * v, 0.16)),
                                               self._hairline(p)))
        return hair

    def _facial_hair(self, p):
        i, fz = self.i, self.face_z
        if i.facial_hair in ("none", "stubble"):
            return None  # stubble is a skin tint (see _albedo)
        if i.facial_hair == "moustache":
            return _ellipsoid(p, (0.0, -0.05, fz - 0.002), (0.038, 0.010, 0.014))
        if i.facial_hair == "goatee":
            return _ellipsoid(p, (0.0, -0.125 * i.head_height, 0.085), (0.03, 0.035, 0.035))
        jaw = _ellipsoid(p, (0.0, -0.075, 0.045), (0.104 * i.head_width * i.jaw, 0.085, 0.105 * i.head_depth))
        return np.maximum(jaw, p[1] + 0.055)  # below the mouth corners

    def _hat(self, p):
        i = self.i
        rx, ry, rz = self.cranium_r
        if i.hat == "none":
            return None
        if i.hat == "cap":
            dome = np.maximum(_ellipsoid(p, (0.0, 0.105, -0.02), (rx + 0.028, ry + 0.025, rz + 0.028)), 0.13 - p[1])
            brim = _ellipsoid(p, (0.0, 0.135, 0.15), (0.10, 0.010, 0.10))
            return np.minimum(dome, brim), _HAT
        if i.hat == "beanie":
            return np.maximum(_ellipsoid(p, (0.0, 0.11, -0.02), (rx + 0.03, ry + 0.035, rz + 0.03)), 0.075 - p[1]), _HAT
        if i.hat == "wide_brim":
            crown = np.maximum(_ellipsoid(p, (0.0, 0.17, -0.02), (rx + 0.02, ry, rz + 0.02)), 0.15 - p[1])
            brim = _ellipsoid(p, (0.0, 0.16, -0.02), (0.27, 0.010, 0.27))
            return np.minimum(crown, brim), _HAT
        if i.hat == "headband":  # around the hair where there is hair: the cap's half-width at this height
            thick = _hair_thickness(i)
            y = 0.16
            half = (rx + thick) * np.sqrt(max(1.0 - ((y - 0.105) / (ry + thick)) ** 2, 0.0))
            return _torus_y(p, (0.0, y, -0.02), half + 0.002, 0.012), _HAT
        # crown: a metal ring on top of the head
        ring = np.maximum(np.abs(np.sqrt(p[0] ** 2 + (p[2] + 0.02) ** 2) - 0.085) - 0.008, np.abs(p[1] - 0.27) - 0.04)
        return ring, _METAL

    def _glasses(self, p):
        i, fz = self.i, self.face_z
        if i.glasses == "none":
            return None
        ax = np.abs(p[0])
        centre = (0.047 * i.head_width, 0.05, fz + 0.018)
        q = (ax, p[1], p[2])
        if i.glasses == "sunglasses":
            lens = _ellipsoid(q, centre, (0.034, 0.026, 0.006))
        elif i.glasses == "square":
            dx, dy = np.abs(ax - centre[0]), np.abs(p[1] - centre[1])
            box = np.maximum(dx - 0.030, dy - 0.022)
            lens = np.maximum(np.abs(box) - 0.004, np.abs(p[2] - centre[2]) - 0.004)
        else:
            lens = _torus_z(q, centre, 0.028, 0.004 if i.glasses == "round" else 0.0025)
        bridge = _capsule(p, (-0.02, 0.055, centre[2]), (0.02, 0.055, centre[2]), 0.003)
        temple = _capsule(q, (centre[0] + 0.03, 0.055, centre[2] - 0.005), (0.125 * i.head_width, 0.05, -0.01), 0.003)
        return np.minimum(np.minimum(lens, bridge), temple)

    def _neckwear(self, p):
        i = self.i
        if i.neckwear == "scarf":
            return _torus_y(p, (0.0, -0.24, -0.01), 0.078 * i.neck, 0.035), _HAT
        if i.neckwear in ("necklace", "choker"):
            y, major = (-0.29, 0.085) if i.neckwear == "necklace" else (-0.19, 0.074)
            return _torus_y(p, (0.0, y, -0.015), major * i.neck, 0.006), _METAL
        if i.neckwear == "bow_tie":
            return _ellipsoid((np.abs(p[0]), p[1], p[2]), (0.025, -0.255, 0.085 * i.neck), (0.028, 0.018, 0.014)), _HAT
        return None

    # --- evaluation --------------------------------------------------------------
    def distance(self, p):
        d = None
        for sdf, _ in self.parts(p):
            d = sdf if d is None else np.minimum(d, sdf)
        return d

    def material(self, p):
        parts = self.parts(p)
        stack = np.stack([sdf for sdf, _ in parts])
        return np.array([m for _, m in parts])[np.argmin(stack, axis=0)]


# ------------------------------------------------------------------ rendering

def _trace(field: _Field, origins, dirs, eps, max_steps=96):
    """Sphere tracing from the bounding sphere -> (hit mask, distance along the ray)."""
    n = len(dirs)
    oc = origins - _BOUND_CENTRE
    b = np.einsum("ij,ij->i", oc, dirs)
    c = np.einsum("ij,ij->i", oc, oc) - _BOUND_RADIUS**2
    disc = b * b - c
    t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0.0)), np.inf)
    t_far = np.where(disc > 0, -b + np.sqrt(np.maximum(disc, 0.0)), -np.inf)
    hit = np.zeros(n, dtype=bool)
    active = np.flatnonzero(disc > 0)
    for _ in range(max_steps):
        if active.size == 0:
            break
        p = origins[active] + dirs[active] * t[active, None]
        d = field.distance((p[:, 0], p[:, 1], p[:, 2]))
        done = d < eps
        hit[active[done]] = True
        t[active] += np.where(done, 0.0, 0.9 * d)
        active = active[~done & (t[active] < t_far[active])]
    return hit, t


def _normals(field: _Field, points, h=1e-3):
    """Unit normals from the SDF's gradient (tetrahedron differences)."""
    k = np.array([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=np.float64)
    g = np.zeros_like(points)
    for kk in k:
        q = points + h * kk
        g += kk * field.distance((q[:, 0], q[:, 1], q[:, 2]))[:, None]
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


_KEY = np.array([0.45, 0.55, 0.70]) / np.linalg.norm([0.45, 0.55, 0.70])
_FILL = np.array([-0.5, 0.35, -0.8]) / np.linalg.norm([-0.5, 0.35, -0.8])


def _albedo(ident: AvatarIdentity, material, points, janus: bool):
    colours = np.array([ident.skin, (0.95, 0.95, 0.95), ident.lips, ident.hair_colour, ident.cloth,
                        ident.accessory, ident.accessory, (0.85, 0.70, 0.30)], dtype=np.float64)
    alb = colours[material]
    # Eyes: white, iris, pupil, by distance from the eye's front point.
    eye = material == _EYE
    if eye.any():
        p = points[eye]
        (ex, ey, ez), radius = _eye(ident)
        z_front = ez + radius
        r_front = np.sqrt((np.abs(p[:, 0]) - ex) ** 2 + (p[:, 1] - ey) ** 2)
        if janus:  # the mirrored eyes look backwards
            back = p[:, 2] < _JANUS_Z
            z_front = np.where(back, 2 * _JANUS_Z - z_front, z_front)
        near_front = np.abs(p[:, 2] - z_front) < 0.02
        r = np.where(near_front, r_front, 1.0) / ident.eye_size
        e = np.where((r < 0.013)[:, None], np.asarray(ident.eye_colour)[None], alb[eye])
        alb[eye] = np.where((r < 0.006)[:, None], 0.05, e)
    if ident.facial_hair == "stubble":
        p = points
        face = p[:, 2] > 0.06
        if janus:
            face |= p[:, 2] < 2 * _JANUS_Z - 0.06
        stub = (material == _SKIN) & (p[:, 1] < -0.04) & (p[:, 1] > -0.17) & face
        alb[stub] = 0.6 * alb[stub] + 0.4 * np.asarray(ident.hair_colour)
    if ident.mono is not None:
        shade = np.array([1.0, 1.0, 0.9, 0.85, 0.95, 0.9, 0.8, 1.0])[material][:, None]
        alb = np.asarray(ident.mono)[None] * shade
    return alb


def _shade(ident: AvatarIdentity, albedo, normals, view_dirs, points, material):
    n = normals
    v = -view_dirs
    ndl = np.clip(n @ _KEY, 0.0, 1.0)
    ndf = np.clip(n @ _FILL, 0.0, 1.0)
    sky = 0.5 + 0.5 * n[:, 1]
    fam = ident.family
    if fam == "cel":
        band = np.where(ndl > 0.45, 1.0, np.where(ndl > 0.1, 0.8, 0.64))
        light = 0.3 + 0.7 * band + 0.1 * (ndf > 0.3)
        return albedo * light[:, None]
    h = _KEY[None] + v
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    ndh = np.clip(np.einsum("ij,ij->i", n, h), 0.0, 1.0)
    ndv = np.clip(np.einsum("ij,ij->i", n, v), 0.0, 1.0)
    if fam == "metal":
        r = 2.0 * ndv[:, None] * n - v  # reflection of the view direction
        env = 0.35 + 0.45 * np.clip(r[:, 1], -1, 1)
        light = 0.15 + 0.55 * ndl + 0.2 * ndf + 0.35 * env
        return albedo * light[:, None] + 0.7 * (ndh**28)[:, None]
    if fam == "matte":
        texture = 0.93 + 0.07 * np.sin(90 * points[:, 0]) * np.sin(90 * points[:, 1]) * np.sin(90 * points[:, 2])
        light = (0.28 + 0.18 * sky + 0.62 * ndl + 0.22 * ndf) * texture
        return albedo * light[:, None]
    gloss = np.where((material == _EYE) | (material == _GLASSES) | (material == _METAL), 0.6, 0.18)
    rim = 0.18 * (1.0 - ndv) ** 3
    light = 0.25 + 0.15 * sky + 0.62 * ndl + 0.2 * ndf
    return albedo * light[:, None] + (gloss * ndh**32 + rim)[:, None]


def _shift(a, axis, step, fill=None):
    """``a`` moved one pixel along ``axis`` without wrapping: the border repeats its edge (or ``fill``)."""
    out = np.empty_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    edge = [slice(None)] * a.ndim
    if step > 0:
        dst[axis], src[axis], edge[axis] = slice(1, None), slice(None, -1), slice(0, 1)
    else:
        dst[axis], src[axis], edge[axis] = slice(None, -1), slice(1, None), slice(-1, None)
    out[tuple(dst)] = a[tuple(src)]
    out[tuple(edge)] = a[tuple(edge)] if fill is None else fill
    return out


def _outlines(depth, material, hit, factor):
    """Ink lines (cel family): silhouette, depth creases and material edges, about one output pixel wide.
    The frame's border is never an outline (a chest cut by the frame has no ink there)."""
    edge = np.zeros_like(hit)
    d = np.where(hit, depth, 10.0)
    for axis in (0, 1):
        for step in (1, -1):
            nd, nm, nh = _shift(d, axis, step), _shift(material, axis, step), _shift(hit, axis, step)
            edge |= hit & ((~nh) | (nd - d > 0.03) | ((nm != material) & nh & (np.abs(nd - d) < 0.05)))
    if factor > 1:  # widen to about an output pixel
        edge = edge | _shift(edge, 0, 1, fill=False) | _shift(edge, 1, 1, fill=False)
    return edge


@dataclass
class AvatarRender:
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) bool: the silhouette (pixel covered by the avatar at least half)


def render_avatar(ident: AvatarIdentity, label, size: int, janus: bool = False, supersample: int | None = None
                  ) -> AvatarRender:
    """One identity seen from one EG3D camera label at ``size`` x ``size``."""
    factor = supersample or (2 if size <= 256 else 1)
    big = size * factor
    rays = pixel_rays(label, big)
    field = _Field(ident, janus)
    origins = np.ascontiguousarray(rays.origins, dtype=np.float64)
    dirs = rays.directions
    # Hit when the distance is below ~1/4 of a (super)pixel's footprint at the camera distance.
    eps = 0.25 * 0.63 / big
    hit, t = _trace(field, origins, dirs, eps)
    colour = np.tile(np.asarray(BACKGROUND, dtype=np.float64), (big * big, 1))
    material = np.full(big * big, -1)
    depth = np.full(big * big, np.inf)
    if hit.any():
        idx = np.flatnonzero(hit)
        pts = origins[idx] + dirs[idx] * t[idx, None]
        mat = field.material((pts[:, 0], pts[:, 1], pts[:, 2]))
        nrm = _normals(field, pts)
        alb = _albedo(ident, mat, pts, janus)
        colour[idx] = _shade(ident, alb, nrm, dirs[idx], pts, mat)
        material[idx] = mat
        depth[idx] = t[idx]
    colour = colour.reshape(big, big, 3)
    hit2 = hit.reshape(big, big)
    if ident.family == "cel":
        ink = _outlines(depth.reshape(big, big), material.reshape(big, big), hit2, factor)
        colour[ink] = 0.08
    if factor > 1:
        colour = colour.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))
        cover = hit2.reshape(size, factor, size, factor).mean(axis=(1, 3))
    else:
        cover = hit2.astype(np.float64)
    image = np.clip(np.rint(colour * 255.0), 0, 255).astype(np.uint8)
    return AvatarRender(image=image, mask=cover >= 0.5)


# ------------------------------------------------------------------ styles -> families

_STYLE_FAMILIES = {
    "cel": ("anime", "ghibli", "chibi", "disney_2d", "flat_cartoon", "comic_book", "superhero_comic", "caricature",
            "pixel_art", "watercolor", "pencil_sketch", "charcoal_drawing", "ink_wash", "ukiyo_e", "art_nouveau",
            "pop_art", "stained_glass", "mosaic"),
    "metal": ("bronze_statue", "gold_statue"),
    "matte": ("clay_figurine", "plush_toy", "knitted_doll", "needle_felted", "papercraft", "wood_carving",
              "marble_bust", "stone_statue", "terracotta", "jade_carving", "ice_sculpture"),
}
# Carvings and statues are one material.
STYLE_MONO = {
    "bronze_statue": (0.62, 0.42, 0.22), "gold_statue": (0.85, 0.66, 0.25), "wood_carving": (0.62, 0.44, 0.27),
    "marble_bust": (0.88, 0.87, 0.84), "stone_statue": (0.58, 0.57, 0.54), "terracotta": (0.72, 0.40, 0.26),
    "jade_carving": (0.40, 0.66, 0.46), "ice_sculpture": (0.75, 0.86, 0.95),
}


def style_family(style: str) -> str:
    """The shading family of a style name; a style we do not know gets a fixed family from its name's hash."""
    for family, names in _STYLE_FAMILIES.items():
        if style in names:
            return family
    if style in _KNOWN_SMOOTH:
        return "smooth"
    return FAMILIES[zlib.crc32(style.encode()) % len(FAMILIES)]


_KNOWN_SMOOTH = ("pixar", "dreamworks", "voxel", "low_poly", "lego_minifigure", "vinyl_toy", "video_game",
                 "photoreal_3d", "sims", "porcelain_doll", "glass_figurine", "wax_figure", "oil_painting",
                 "impressionist", "cyberpunk", "steampunk", "fantasy_elf", "gothic", "hologram")
