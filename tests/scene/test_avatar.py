"""The procedural avatar and its CPU renderer (avatar3d.scene.avatar): determinism, silhouettes, 3D consistency.

Small renders (32-48 px, ~0.02-0.05 s each); every geometric check compares
masks of one identity seen from several EG3D cameras.
"""
import dataclasses

import numpy as np
import pytest

from avatar3d.scene.avatar import (
    BACKGROUND,
    FACIAL_HAIR,
    FAMILIES,
    GLASSES,
    HAIR_STYLES,
    HATS,
    NECKWEAR,
    AvatarIdentity,
    AvatarRender,
    render_avatar,
    style_family,
)
from avatar3d.scene.cameras import camera_label

BG = np.rint(np.asarray(BACKGROUND) * 255).astype(np.uint8)
# Symmetric in x: no accessories, short hair (the defaults).
SYMMETRIC = AvatarIdentity(hair="short", hat="none", glasses="none", facial_hair="none", earrings=False,
                           neckwear="none")


def _render(ident, yaw, pitch=0.0, size=48, **kw) -> AvatarRender:
    return render_avatar(ident, camera_label(yaw, pitch), size, **kw)


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _dilate(mask, r):
    """Chebyshev dilation by r pixels (no wrap-around)."""
    p = np.pad(mask, r)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def _mad(a, b) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


# ----------------------------------------------------------------- determinism and identity I/O


def test_same_identity_camera_size_gives_same_bytes():
    ident = AvatarIdentity(family="cel", hair="long", glasses="round", earrings=True)
    a = _render(ident, 37.0, 12.0, size=32)
    b = _render(ident, 37.0, 12.0, size=32)
    assert a.image.dtype == np.uint8 and a.image.shape == (32, 32, 3)
    assert a.mask.dtype == np.bool_ and a.mask.shape == (32, 32)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.mask, b.mask)
    # ... and another camera gives another image.
    assert _mad(a.image, _render(ident, 47.0, 12.0, size=32).image) > 1.0


def test_json_round_trip_equals_and_renders_the_same():
    ident = AvatarIdentity(family="metal", head_width=1.0123456789012345, hair="braids", hat="crown",
                           glasses="sunglasses", facial_hair="goatee", earrings=True, neckwear="scarf",
                           skin=(0.1, 0.2, 0.30000000000000004), mono=(0.62, 0.42, 0.22))
    text = ident.to_json()
    assert "\n" not in text and '"hair":"braids"' in text
    back = AvatarIdentity.from_json(text)
    assert back == ident and hash(back) == hash(ident)  # tuples restored, floats exact
    assert isinstance(back.skin, tuple) and isinstance(back.mono, tuple)
    assert back.to_json() == text
    assert _render(back, -120.0, size=32).image.tobytes() == _render(ident, -120.0, size=32).image.tobytes()
    # mono=None survives too.
    assert AvatarIdentity.from_json(AvatarIdentity().to_json()) == AvatarIdentity()


@pytest.mark.parametrize("field, value", [("hair", "nope"), ("family", "glossy"), ("hat", "fedora"),
                                          ("glasses", "monocle"), ("facial_hair", "sideburns"),
                                          ("neckwear", "tie")])
def test_invalid_choice_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"AvatarIdentity\.{field}='{value}'"):
        AvatarIdentity(**{field: value})


def test_from_json_rejects_unknown_keys():
    data = AvatarIdentity().to_json()[:-1] + ',"tail":"long"}'
    with pytest.raises(ValueError, match="unknown field.*'tail'"):
        AvatarIdentity.from_json(data)
    with pytest.raises(ValueError, match="hair"):
        AvatarIdentity.from_json(AvatarIdentity().to_json().replace('"hair":"short"', '"hair":"nope"'))


# ----------------------------------------------------------------- mask and background


@pytest.mark.parametrize("yaw, pitch", [(0.0, 0.0), (90.0, 15.0), (180.0, -10.0), (-135.0, 25.0)])
def test_mask_is_a_centred_head_and_shoulders(yaw, pitch):
    size = 32
    r = _render(AvatarIdentity(hair="wavy", hat="beanie"), yaw, pitch, size=size)
    cover = r.mask.mean()
    assert 0.2 < cover < 0.8
    rows, cols = np.nonzero(r.mask)
    centre = (size - 1) / 2
    assert abs(cols.mean() - centre) < 0.1 * size and abs(rows.mean() - centre) < 0.15 * size
    # Head on top, the chest cut by the bottom of the frame.
    assert r.mask[0].sum() < 0.25 * size and r.mask[-1].sum() > 0.25 * size
    # The avatar's pixels are not the background colour (the mask and the pixels agree).
    assert np.mean(np.all(r.image[r.mask] == BG, axis=-1)) < 0.02


@pytest.mark.parametrize("family", ["cel", "smooth", "metal", "matte"])
def test_background_is_flat_away_from_the_avatar(family):
    ident = AvatarIdentity(family=family, hair="long", hat="wide_brim", glasses="round")
    for yaw in (0.0, 90.0, -150.0):
        r = _render(ident, yaw, 10.0, size=32)
        for corner in (r.image[0, 0], r.image[0, -1], r.image[-1, 0] if not r.mask[-1, 0] else BG):
            assert np.array_equal(corner, BG)
        far = ~_dilate(r.mask, 2)
        assert far.sum() > 100
        assert np.all(r.image[far] == BG), f"{family} yaw {yaw}: non-background pixels far from the avatar"


# ----------------------------------------------------------------- silhouettes from several cameras


def test_front_silhouette_is_left_right_symmetric():
    m = _render(SYMMETRIC, 0.0).mask
    assert _iou(m, m[:, ::-1]) > 0.95
    # Not trivially so: a side view is not symmetric.
    side = _render(SYMMETRIC, 90.0).mask
    assert _iou(side, side[:, ::-1]) < 0.9


def test_left_and_right_profiles_are_mirror_images():
    left = _render(SYMMETRIC, 90.0).mask
    right = _render(SYMMETRIC, -90.0).mask
    assert _iou(left, right[:, ::-1]) > 0.95
    assert _iou(left, right) < 0.85  # they face opposite ways


def test_front_and_back_silhouettes_are_mirror_images():
    # One 3D shape: from behind, its outline is the front outline mirrored (up to perspective).
    front = _render(SYMMETRIC, 0.0).mask
    back = _render(SYMMETRIC, 180.0).mask
    assert _iou(front, back[:, ::-1]) > 0.95
    # A 3/4 view and the opposite 3/4 view from behind share the outline the same way.
    a = _render(SYMMETRIC, 40.0, 5.0).mask
    b = _render(SYMMETRIC, -140.0, -5.0).mask
    assert _iou(a, b[:, ::-1]) > 0.85
    assert _iou(a, b[:, ::-1]) > _iou(a, b)


def test_janus_back_shows_a_face():
    ident = AvatarIdentity(family="smooth")
    front = _render(ident, 0.0)
    back = _render(ident, 180.0)
    janus = _render(ident, 180.0, janus=True)
    assert _mad(janus.image, back.image) > 5.0
    # From behind the Janus face is the front face mirrored: closer to the front view than the real back is.
    assert _mad(janus.image, front.image[:, ::-1]) < 0.9 * _mad(back.image, front.image[:, ::-1])
    # The failure lives on the back of the head: from the front a Janus render is (nearly) the normal one.
    assert _mad(_render(ident, 0.0, janus=True).image, front.image) < 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_janus_back_differs_in_every_family(family):
    ident = AvatarIdentity(family=family)
    assert _mad(_render(ident, 180.0, size=32, janus=True).image, _render(ident, 180.0, size=32).image) > 5.0


def test_head_width_widens_the_head_silhouette():
    # The shoulders (bottom rows) fill the frame either way; compare the head (top half of the image).
    size = 48
    narrow = _render(AvatarIdentity(head_width=0.9), 0.0, size=size).mask[: size // 2]
    wide = _render(AvatarIdentity(head_width=1.1), 0.0, size=size).mask[: size // 2]
    n_cols, w_cols = int(narrow.any(axis=0).sum()), int(wide.any(axis=0).sum())
    assert w_cols >= n_cols + 3, (n_cols, w_cols)
    assert wide.sum() > 1.1 * narrow.sum()


_OPTIONS = ([("hair", h) for h in HAIR_STYLES if h != "short"] + [("hat", h) for h in HATS[1:]]
            + [("glasses", g) for g in GLASSES[1:]] + [("facial_hair", f) for f in FACIAL_HAIR[1:]]
            + [("neckwear", n) for n in NECKWEAR[1:]] + [("earrings", True)])


@pytest.fixture(scope="module")
def base_render():
    return _render(AvatarIdentity(hair="short"), 25.0, -10.0, size=32)


@pytest.mark.parametrize("name, value", _OPTIONS)
def test_every_option_renders_and_shows(base_render, name, value):
    """Each hairstyle, hat, pair of glasses, ... is visible on a default avatar at a 3/4 view."""
    r = _render(AvatarIdentity(**{"hair": "short", name: value}), 25.0, -10.0, size=32)
    assert r.mask.sum() > 100
    assert _mad(r.image, base_render.image) > 0.05, f"{name}={value!r} does not change the image"


def test_mono_colour_paints_the_whole_figure_in_one_hue():
    statue = _render(AvatarIdentity(family="matte", mono=(0.88, 0.87, 0.84), cloth=(0.9, 0.1, 0.1),
                                    hair_colour=(0.0, 0.0, 1.0)), 20.0, size=32)
    px = statue.image[statue.mask].astype(np.float64)
    # Near-grey stone: every covered pixel has almost equal channels (the red cloth and blue hair are gone).
    assert np.max(px.max(axis=1) - px.min(axis=1)) < 20


# ----------------------------------------------------------------- styles -> families


@pytest.mark.parametrize("style, family", [("anime", "cel"), ("bronze_statue", "metal"), ("gold_statue", "metal"),
                                           ("clay_figurine", "matte"), ("pixar", "smooth"),
                                           ("comic_book", "cel"), ("marble_bust", "matte")])
def test_style_family_of_known_styles(style, family):
    assert style_family(style) == family


def test_unknown_style_gets_a_stable_family():
    names = [f"my_custom_style_{i}" for i in range(24)]
    families = [style_family(n) for n in names]
    assert families == [style_family(n) for n in names]
    assert set(families) <= set(FAMILIES)
    assert len(set(families)) > 1  # a hash, not one constant fallback


def test_every_builtin_style_has_a_family():
    from avatar3d.prompts import load_styles

    for style in load_styles():
        assert style_family(style.name) in FAMILIES


@pytest.mark.parametrize("hair", HAIR_STYLES)
def test_headband_shows_over_every_hairstyle(hair):
    """The headband sits on the hair, whatever its volume: a row that says 'headband' shows one."""
    for volume in (0.8, 1.25):
        base = _render(AvatarIdentity(hair=hair, hair_volume=volume), 0.0, 0.0, size=32)
        band = _render(AvatarIdentity(hair=hair, hair_volume=volume, hat="headband"), 0.0, 0.0, size=32)
        assert _mad(band.image, base.image) > 0.05, (hair, volume)
