"""evaluation/image_to_avatar/: the world encoder trains and loads by folder, and the accuracy runner scores every
method on a tiny budget with intervals that bracket their means (the real runs: evaluation/image_to_avatar/README.md)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.prior.config import BuildPairsConfig
from avatar3d.prior.encoder import load_image_encoder
from avatar3d.prior.model import PriorSize, build_prior, set_w_stats, train_scheduler
from avatar3d.prior.pairs import read_pairs, run_build_pairs, w_statistics
from avatar3d.prior.pipeline import ImageToAvatarPipeline
from avatar3d.gan.config import GANConfig
from avatar3d.gan.generator import TriPlaneGenerator
from avatar3d.gan.snapshot import load_snapshot, save_snapshot
from tests.training.fixtures import MICRO_GAN

HERE = Path(__file__).resolve().parents[2] / "evaluation" / "image_to_avatar"


def _load(name):
    sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


world_encoder = _load("world_encoder")
measure = _load("measure_accuracy")


def test_info_nce_is_low_for_matched_views_and_high_for_shuffled():
    a = torch.nn.functional.one_hot(torch.arange(8), 16).float()
    matched = world_encoder.info_nce(a, a, 0.1)
    shuffled = world_encoder.info_nce(a, a[torch.roll(torch.arange(8), 1)], 0.1)
    assert matched < 0.01 and shuffled > 9.0  # log(8) = 2.1 at random; 1/0.1 = 10 logits apart


def test_degrade_blurs_and_shifts_but_never_recolours():
    # Images of four flat colour blocks: blur and shifts move edges, a recolouring would move the mean colour.
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 2, 2, generator=g).repeat_interleave(32, dim=2).repeat_interleave(32, dim=3) * 2 - 1
    y = world_encoder.degrade(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert (y.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().max() < 0.06  # shifts at the border, noise
    assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 0.05                # every image was degraded
    edge = lambda t: (t[..., :, 1:] - t[..., :, :-1]).abs().amax(dim=(1, 2, 3))  # noqa: E731
    assert (edge(y) < 0.8 * edge(x)).sum() >= 8                            # some of them blurred


def test_paired_bootstrap_brackets_the_mean_difference():
    rng = np.random.default_rng(0)
    b = rng.random(200)
    lo, hi = measure.paired_bootstrap(b + 0.1 + 0.01 * rng.standard_normal(200), b)
    assert lo < 0.1 < hi and hi - lo < 0.01
    lo, hi = measure.paired_bootstrap(rng.random(200), rng.random(200))
    assert lo < 0 < hi


def _versus(colour, sil, view):
    return {"colour_error": {"ci95": list(colour)}, "silhouette_iou": {"ci95": list(sil)},
            "view_consistency": {"ci95": list(view)}}


@pytest.mark.parametrize("colour, sil, view, wins", [
    ((-9.0, -3.0), (0.01, 0.03), (-0.02, 0.0), True),     # lower colour error, higher IoU, views within the margin
    ((-9.0, -3.0), (-0.01, 0.03), (-0.02, 0.0), False),   # silhouette interval holds 0
    ((1.0, 3.0), (0.01, 0.03), (-0.02, 0.0), False),      # colour error higher: worse
    ((-9.0, 3.0), (0.01, 0.03), (-0.02, 0.0), False),     # colour interval holds 0
    ((-9.0, -3.0), (0.01, 0.03), (-0.2, -0.1), False),    # views worse by more than the margin
])
def test_prior_wins_reads_each_metric_in_its_direction(colour, sil, view, wins):
    assert measure.prior_wins(_versus(colour, sil, view)) is wins


def test_pencil_drawing_is_grey_and_keeps_the_size():
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    out = measure.pencil(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_encoder_and_accuracy_runner_on_a_tiny_budget(tmp_path):
    # 1. A world encoder, a few steps: saved in the hub layout, loaded by folder like a hub CLIP.
    enc_dir = tmp_path / "encoder"
    assert world_encoder.main(["--out", str(enc_dir), "--identities", "12", "--test", "6", "--steps", "3",
                               "--batch", "6", "--workers", "1"]) == 0
    card = json.loads((enc_dir / "world_encoder.json").read_text())
    assert card["train_identities"] == 12 and card["chance_top1"] == pytest.approx(1 / 6)
    assert set(card["retrieval"]) == {"front_to_side_top1", "front_to_back_top1"}
    encoder = load_image_encoder(str(enc_dir))
    assert encoder.dim == world_encoder.ENCODER_ARCH["projection_dim"]

    # 2. A micro generator, pairs embedded by that encoder, an untrained prior: a pipeline folder.
    cfg = GANConfig.tiny(**MICRO_GAN)
    torch.manual_seed(0)
    snapshot = save_snapshot(tmp_path / "g.safetensors", TriPlaneGenerator(cfg).eval(), cfg.to_dict(), {"kimg": 0.0})
    pairs_dir = run_build_pairs(BuildPairsConfig(output_dir=str(tmp_path / "pairs"), snapshot=str(snapshot),
                                                 num_pairs=24, image_encoder=str(enc_dir), batch_size=24),
                                use_ray=False).folder
    pairs = read_pairs(pairs_dir)
    prior = build_prior(pairs.w.shape[1], pairs.embedding.shape[1], PriorSize.preset("tiny"))
    set_w_stats(prior, *map(torch.from_numpy, w_statistics(pairs_dir)))
    pipe = ImageToAvatarPipeline(encoder, prior, train_scheduler("sample"), load_snapshot(snapshot).generator,
                                 defaults={"num_inference_steps": 3})
    prior_dir = pipe.save_pretrained(tmp_path / "prior", snapshot)

    # 3. The runner: every method scored per identity, intervals bracket the differences, pictures written.
    out = tmp_path / "results"
    assert measure.main(["--prior", str(prior_dir), "--pairs", str(pairs_dir), "--identities", "5", "--show", "2",
                         "--classifier-train", "24", "--classifier-steps", "3", "--oracle-pool", "24",
                         "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["identities"] == 5 and result["num_pairs"] == 24 and result["size"] == cfg.output_resolution
    assert set(result["table"]) == {"prior", "nearest", "mean", "random", "prior_from_yaw60",
                                    "prior_from_pencil_drawing", "oracle_silhouette"}
    # the oracle searches, with the truth, the same 24 pairs the nearest baseline picks from: as good or better,
    # up to the ray jitter of renders made in other batches
    assert result["table"]["oracle_silhouette"]["silhouette_iou"] >= result["table"]["nearest"]["silhouette_iou"] - 0.02
    for row in result["table"].values():
        assert 0.0 <= row["silhouette_iou"] <= 1.0 and 0.0 <= row["view_consistency"] <= 1.0
        assert 0.0 <= row["colour_error"] <= 255.0
    for base in ("nearest", "mean", "random"):
        for m in measure.METRICS:
            v = result["prior_vs"][base][m]
            assert v["ci95"][0] <= v["prior_minus_baseline"] + 1e-9 and v["prior_minus_baseline"] <= v["ci95"][1] + 1e-9
        assert result["prior_vs"][base]["prior_wins"] is measure.prior_wins(result["prior_vs"][base])
    from PIL import Image
    assert Image.open(out / "heldout_identities.png").size == (cfg.output_resolution * 11 * 2, cfg.output_resolution * 2 * 2)
    assert (out / "special_inputs.png").is_file()
