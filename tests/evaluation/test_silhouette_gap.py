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


def test_image_outlines_are_the_same_avatars_as_the_opacity_masks():
    from avatar3d.evaluation.truth import MATCH_CAMERA, generator_views
    from tests.evaluation.helpers import micro_generator

    G = micro_generator()
    images, opacity = gap.image_outlines(G, 3, seed=4)
    assert set(images) == set(opacity) == {"front", *HELDOUT_CAMERAS}
    size = int(G.cfg.output_resolution)
    for name, (yaw, pitch) in {"front": MATCH_CAMERA, **HELDOUT_CAMERAS}.items():
        z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(4))
        rgb, masks = generator_views(G, [yaw] * 3, [pitch] * 3, 4, z=z, condition=MATCH_CAMERA)
        assert images[name].shape == (3, size, size) and images[name].dtype == bool
        assert np.array_equal(opacity[name], masks)  # the avatars generator_masks scores: z seeded, front-mapped
        assert np.array_equal(images[name], rgb.min(axis=-1) < gap.IMAGE_THRESHOLD)
    every, _ = gap.image_outlines(G, 2, seed=4, threshold=256)
    none, _ = gap.image_outlines(G, 2, seed=4, threshold=0)
    assert all(m.all() for m in every.values()) and not any(m.any() for m in none.values())


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
