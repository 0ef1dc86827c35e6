"""evaluation/gan/silhouette_gap.py's diversity step: pairwise outline IoU and distinct identities matched."""
import importlib.util
from pathlib import Path

import numpy as np

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
