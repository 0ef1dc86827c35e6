"""evaluation/gan/silhouette_gap.py: the diversity step (pairwise outline IoU, distinct identities matched) and
the image outlines beside the opacity's."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from avatar3d.evaluation.truth import HELDOUT_CAMERAS, TruthWorld

SCRIPT = Path(__file__).resolve().parents[2] / "evaluation" / "gan" / "silhouette_gap.py"
_spec = importlib.util.spec_from_file_location("silhouette_gap", SCRIPT)
gap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gap)


def _square(half):
    m = np.zeros((16, 16), dtype=bool)
    m[8 - half:8 + half, 8 - half:8 + half] = True
    return m


def _world(masks):
    return TruthWorld(styles=[], size=16, classifier=None, identities=[None] * len(masks["front"]), masks=masks,
                      kid_truth={}, kid_yaws={})


def test_diversity_tells_one_shape_from_many():
    # Four identities of four sizes; every camera shows the same square (enough for the front match).
    shapes = np.stack([_square(h) for h in (2, 3, 5, 7)])
    world = _world({name: shapes for name in ("front", *HELDOUT_CAMERAS)})
    same = {name: np.stack([shapes[2]] * 4) for name in ("front", *HELDOUT_CAMERAS)}
    varied = {name: shapes[::-1].copy() for name in ("front", *HELDOUT_CAMERAS)}

    one = gap.diversity(world, same)
    assert one == {"pairwise_front_iou": 1.0, "identities_matched": 1, "avatars": 4}
    many = gap.diversity(world, varied)
    assert many["identities_matched"] == 4
    # squares of half-widths 2, 3, 5, 7 nest: IoU of two is (small / large) area
    areas = np.array([16, 36, 100, 196])
    expected = np.mean([min(a, b) / max(a, b) for i, a in enumerate(areas) for j, b in enumerate(areas) if i != j])
    assert np.isclose(many["pairwise_front_iou"], expected)


def test_image_outlines_are_the_avatars_the_agreement_scores():
    import pytest

    from avatar3d.gan.config import GANConfig
    from avatar3d.gan.generator import TriPlaneGenerator
    from tests.training.fixtures import MICRO_GAN

    torch.manual_seed(0)
    G = TriPlaneGenerator(GANConfig.tiny(**{**MICRO_GAN, "white_back": True})).eval().requires_grad_(False)
    size = int(G.cfg.output_resolution)
    images, opacity = gap.image_outlines(G, 3, seed=4)
    world = TruthWorld(styles=[], size=size, classifier=None, identities=[], masks={}, kid_truth={}, kid_yaws={})
    scored = world.generator_masks(G, 3, seed=4)
    assert set(images) == set(opacity) == set(scored) == {"front", *HELDOUT_CAMERAS}
    for name in scored:
        assert np.array_equal(opacity[name], scored[name])  # the same avatars, the same silhouettes
        assert images[name].shape == (3, size, size) and images[name].dtype == bool
    every, _ = gap.image_outlines(G, 2, seed=4, threshold=256)
    none, _ = gap.image_outlines(G, 2, seed=4, threshold=0)
    assert all(m.all() for m in every.values()) and not any(m.any() for m in none.values())
    G.cfg = G.cfg.replace(white_back=False)
    with pytest.raises(ValueError, match="white_back"):
        gap.image_outlines(G, 2, seed=4)


def test_the_baseline_can_be_fit_out_of_sample():
    shapes = np.stack([_square(h) for h in (2, 3, 5, 7)])
    world = _world({name: shapes for name in ("front", *HELDOUT_CAMERAS)})
    # in sample: the majority mask of the four squares is the half-width-5 square (covered by 2 of 4 identities)
    expected = np.mean([16 / 100, 36 / 100, 1.0, 100 / 196])
    assert all(np.isclose(v, expected) for v in gap.baseline_per_camera(world).values())
    # fit on other masks (all the largest square): IoU of each identity with it
    big = {name: np.stack([shapes[3]] * 3) for name in HELDOUT_CAMERAS}
    assert all(np.isclose(v, np.mean([16 / 196, 36 / 196, 100 / 196, 1.0]))
               for v in gap.baseline_per_camera(world, big).values())


def test_shifted_moves_masks_without_wrapping():
    m = np.zeros((1, 6, 6), dtype=bool)
    m[0, 0, 5] = m[0, 2, 2] = True
    right = gap.shifted(m, 0, 1)
    assert right[0, 2, 3] and right.sum() == 1  # the pixel at the right edge left the frame, none came round
    assert np.array_equal(gap.shifted(gap.shifted(m, 1, -2), -1, 2)[0, 2, 2], True)
    assert np.array_equal(gap.shifted(m, 0, 0), m)


def test_best_shift_finds_a_displaced_outline_and_its_direction():
    target = np.stack([_square(3), _square(2)])
    moved = gap.shifted(target, 0, 2)  # both outlines sit 2 px to the right of their identity's
    cells = gap.best_shift(moved, target)
    assert cells["iou_shifted"] == 1.0 and cells["dx"] == -2.0 and cells["dy"] == 0.0
    assert np.isclose(cells["iou"], np.mean([24 / 48, 8 / 24]))  # 6x6 squares overlap 4x6 of 6x8; 4x4: 2x4 of 4x6
    # a wrong shape does not recover: a 2-px square inside a 3-px one fits no better for any shift
    wrong = gap.best_shift(np.stack([_square(2)]), np.stack([_square(3)]))
    assert np.isclose(wrong["iou"], 16 / 36) and np.isclose(wrong["iou_shifted"], 16 / 36)
    assert wrong["dx"] == 0.0 and wrong["dy"] == 0.0  # ties (any 1-px move keeps it inside) go to no move
    # the search stops at max_shift
    far = gap.best_shift(gap.shifted(target, 0, 3), target, max_shift=2)
    assert far["iou_shifted"] < 1.0 and far["dx"] == -2.0


def test_placement_matches_at_the_front_and_scores_the_baseline_per_identity():
    shapes = np.stack([_square(h) for h in (2, 3, 5, 7)])
    world = _world({name: shapes for name in ("front", *HELDOUT_CAMERAS)})
    # avatars right at the front, one pixel down at every held-out camera
    avatars = {"front": shapes, **{name: gap.shifted(shapes, 1, 0) for name in HELDOUT_CAMERAS}}
    cells = gap.placement(world, avatars)
    assert set(cells) == set(HELDOUT_CAMERAS)
    assert all(c["iou_shifted"] == 1.0 and c["dy"] == -1.0 and c["iou"] < 1.0 for c in cells.values())
    base = gap.placement(world)
    assert all(np.isclose(c["iou"], v) for c, v in zip(base.values(), gap.baseline_per_camera(world).values()))
    # the majority square is centred like every identity: no move beats none, and none is what is reported
    assert all(c["iou_shifted"] == c["iou"] and c["dx"] == 0.0 and c["dy"] == 0.0 for c in base.values())


def test_where_lost_splits_excess_from_missing(tmp_path):
    shapes = np.stack([_square(h) for h in (2, 3, 5, 7)])
    world = _world({name: shapes for name in ("front", *HELDOUT_CAMERAS)})
    # avatars exact at the front; at every held-out camera the 7-px square's avatar is the 5-px square
    held = shapes.copy()
    held[3] = shapes[2]
    maps = gap.where_lost(world, {"front": shapes, **{name: held for name in HELDOUT_CAMERAS}})
    for excess, missing in maps.values():
        assert excess.sum() == 0  # nothing painted where the identity is empty
        assert np.isclose(missing.sum(), (196 - 100) / 4)  # one avatar of four misses the ring between the squares
        assert missing.max() == 0.25
    base = gap.where_lost(world)  # the majority square (half-width 5) against each identity
    for excess, missing in base.values():
        assert np.isclose(excess.sum(), (100 - 16 + 100 - 36) / 4) and np.isclose(missing.sum(), 96 / 4)
    gap.where_picture(world, {"avatars": maps, "mean silhouette": base}, tmp_path / "where.png", scale=2)
    from PIL import Image
    picture = Image.open(tmp_path / "where.png")
    assert picture.width == 150 + 3 * 18 * 2 and picture.height == 14 + 2 * 18 * 2


def test_where_picture_paints_excess_red_and_missing_blue(tmp_path):
    from PIL import Image

    shapes = np.stack([_square(3)])
    world = _world({name: shapes for name in ("front", *HELDOUT_CAMERAS)})
    excess, missing = np.zeros((16, 16)), np.zeros((16, 16))
    excess[0, 0] = 1.0  # every avatar covers the corner, outside the identities' outline
    missing[8, 8] = 1.0  # every avatar leaves out the centre, inside it
    maps = {name: np.stack([excess, missing]) for name in HELDOUT_CAMERAS}
    gap.where_picture(world, {"row": maps}, tmp_path / "where.png", scale=1)
    picture = np.asarray(Image.open(tmp_path / "where.png").convert("RGB"))
    x0, y0 = 150 + 1, 14 + 1  # the first tile's pixel (0, 0), inside its 1-px frame
    assert tuple(picture[y0, x0]) == (255, 0, 0)  # excess: red
    assert tuple(picture[y0 + 8, x0 + 8]) == (0, 0, 215)  # missing, on the grey outline: blue
    assert tuple(picture[y0 + 8, x0 + 7]) == (215, 215, 215)  # the outline, nothing lost: grey
    assert tuple(picture[y0 + 15, x0 + 15]) == (255, 255, 255)  # outside, nothing lost: white


def test_own_nearest_tells_another_identitys_outline_from_no_identitys():
    shapes = np.stack([_square(h) for h in (2, 3, 5, 7)])
    world = _world({name: shapes for name in ("front", *HELDOUT_CAMERAS)})
    # Right fronts; at the held-out cameras, each avatar shows *another* identity's outline (the order reversed):
    # matched at the front they score low, each on its own is an identity's exact outline.
    swapped = {"front": shapes, **{name: shapes[::-1].copy() for name in HELDOUT_CAMERAS}}
    cells = gap.own_nearest(world, swapped)
    assert set(cells) == set(HELDOUT_CAMERAS)
    assert all(c["nearest"] == 1.0 for c in cells.values())
    assert all(v < 0.6 for v in gap.per_camera(world, swapped).values())
    # an outline no identity has (a 1-px-wide bar) fits none of them, whichever is nearest
    bar = np.zeros((4, 16, 16), dtype=bool)
    bar[:, :, 8] = True
    odd = gap.own_nearest(world, {"front": shapes, **{name: bar for name in HELDOUT_CAMERAS}})
    assert all(np.isclose(c["nearest"], 4 / (16 + 12)) for c in odd.values())  # best: the 2-px square (4 shared px)
    # the mean-silhouette column is the IoU with the majority square (half-width 5)
    assert all(np.isclose(c["mean_silhouette"], np.mean([16 / 100, 36 / 100, 1.0, 100 / 196]))
               for c in cells.values())
