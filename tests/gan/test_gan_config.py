"""GANConfig: presets, validation, dict round trip."""
import json

import pytest
import torch

from avatar3d.gan.config import GANConfig
from avatar3d.scene.pose_bins import PoseBins

torch.set_num_threads(1)


def test_paper_preset_matches_method():
    cfg = GANConfig.paper()
    assert (cfg.plane_resolution, cfg.plane_channels, cfg.output_resolution) == (256, 32, 512)
    assert (cfg.neural_rendering_resolution, cfg.neural_rendering_resolution_final) == (64, 128)
    assert (cfg.depth_samples, cfg.importance_samples) == (48, 48)
    assert (cfg.ray_start, cfg.ray_end, cfg.box_warp) == (2.0, 3.4, 1.0)
    assert (cfg.lr_g, cfg.lr_d, cfg.betas) == (0.0025, 0.002, (0.0, 0.99))
    assert cfg.d_label_dim == PoseBins().label_dim


def test_neural_resolution_fades_from_64_to_128():
    cfg = GANConfig.paper()
    assert cfg.neural_resolution_at(0) == 64
    assert cfg.neural_resolution_at(500_000) == 96
    assert cfg.neural_resolution_at(10_000_000) == 128
    assert GANConfig.tiny().neural_resolution_at(10_000_000) == 32


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_dict_round_trip_through_json(name):
    cfg = GANConfig.preset(name, d_mode="coarse", pose_bins=PoseBins(fine_yaw=12, pitch_range=(-20.0, 40.0)))
    back = GANConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


@pytest.mark.parametrize("bad, field", [
    (dict(d_mode="medium"), "d_mode"),
    (dict(plane_resolution=48), "plane_resolution"),
    (dict(ray_start=3.0, ray_end=2.0), "ray_end"),
    (dict(output_resolution=512, sr_input_resolution=32), "sr_input_resolution"),
    (dict(p_fine_reliable=1.5), "p_fine_reliable"),
])
def test_bad_values_raise_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        GANConfig.tiny(**bad)


def test_unknown_fields_and_presets_are_rejected():
    with pytest.raises(ValueError, match="zdim"):
        GANConfig.from_dict({"zdim": 3})
    with pytest.raises(ValueError, match="huge"):
        GANConfig.preset("huge")


def test_default_fine_label_rates_are_0_9_within_45_degrees_and_0_2_elsewhere():
    """README: "The discriminator keeps the fine label with p = 0.9 for |yaw| <= 45 and p = 0.2 elsewhere":
    the config's defaults, and what the selector built from a default config uses."""
    from avatar3d.gan import CoarseToFineSelector

    cfg = GANConfig()
    assert (cfg.p_fine_reliable, cfg.p_fine_other, cfg.fine_yaw_max, cfg.d_mode) == (0.9, 0.2, 45.0, "coarse_to_fine")
    for preset in (GANConfig.tiny(), GANConfig.paper()):
        assert (preset.p_fine_reliable, preset.p_fine_other, preset.fine_yaw_max) == (0.9, 0.2, 45.0)
    selector = CoarseToFineSelector.from_config(cfg)
    yaw = torch.tensor([0.0, 45.0, -45.0, 45.5, 90.0, 180.0, -135.0])
    assert selector.p_fine(yaw).tolist() == pytest.approx([0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2])
