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
