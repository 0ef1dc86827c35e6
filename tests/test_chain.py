"""The pipeline runner: validation, stage bookkeeping, and the HTML report."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.chain import ChainConfig, run_chain, stage_configs
from avatar3d.config import ConfigError, load_config
from avatar3d.gan.config import GANConfig
from avatar3d.report import write_report
from tests import CONFIGS, REPO

DEMO = CONFIGS / "demo_tiny.yaml"


@pytest.mark.parametrize("override, pattern", [
    ("stages=[train_gan, generate]", "must be in pipeline order"),
    ("stages=[deploy]", "'deploy' is not allowed"),
    ("from_stage=nope", "from_stage: 'nope' is not a stage"),
])
def test_bad_chain_options(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(ChainConfig, DEMO, [override])


def test_the_demo_config_works_from_any_current_folder(tmp_path, monkeypatch):
    """Relative input paths in the chain's file (stage configs, ``resume=`` in an overrides list) are read
    from the file's folder; output_dir and command-line overrides from the current folder."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ChainConfig, DEMO, ["output_dir=out", "prior_train_overrides=[resume=ckpt]"])
    assert cfg.config_dir == str(DEMO.parent) and cfg.output_dir == "out"
    assert cfg.generate_config == str(DEMO.parent / "generate_procedural.yaml")
    stages = stage_configs(cfg, tmp_path / "out", "sqlite:///" + str(tmp_path / "mlflow.db"))
    assert stages.train.resume == str(REPO / "jobs" / "assets" / "gan_world")
    assert Path(stages.train.resume, "snapshot.safetensors").is_file()
    assert stages.generate.pipeline.preset == "procedural"  # generate_procedural.yaml was read
    assert stages.prior.resume == str(DEMO.parent / "ckpt")  # an override inside the file's list: its folder
    assert stages.train.data.path == str(tmp_path / "out" / "dataset")  # the chain's wiring is absolute


def test_a_missing_stage_config_names_the_option_and_where_it_was_looked_for(tmp_path):
    (tmp_path / "chain.yaml").write_text("generate_config: configs/gen.yaml\n")
    cfg = load_config(ChainConfig, tmp_path / "chain.yaml", [f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"^generate_config: config file not found: .*/configs/gen.yaml \(relative") as err:
        run_chain(cfg)
    assert str(tmp_path / "configs" / "gen.yaml") in str(err.value) and not (tmp_path / "out").exists()


def test_stage_configs_are_checked_before_anything_runs(tmp_path):
    cfg = load_config(ChainConfig, DEMO,
                      [f"output_dir={tmp_path}", "train_overrides=[batch_sise=3]"])
    with pytest.raises(ConfigError, match="unknown option 'batch_sise'"):
        run_chain(cfg)
    assert not (tmp_path / "guidance").exists()


def test_guidance_and_report_stages_and_skip_on_rerun(tmp_path):
    cfg = load_config(ChainConfig, DEMO,
                      [f"output_dir={tmp_path}", "stages=[guidance, report]", "guidance_views=4", "guidance_size=32"])
    first = run_chain(cfg)
    assert first.ran == ["guidance", "report"] and first.report.is_file()
    page = first.report.read_text()
    assert "guidance.png" in page and "View- and attribute-aware prompts" in page
    assert (tmp_path / "report" / "guidance.png").is_file()
    again = run_chain(cfg)
    assert again.ran == [] and again.skipped == ["guidance", "report"]
    forced = run_chain(load_config(ChainConfig, DEMO, [
        f"output_dir={tmp_path}", "stages=[guidance, report]", "guidance_views=4", "guidance_size=32",
        "from_stage=report"]))
    assert forced.ran == ["report"] and forced.skipped == ["guidance"]
    assert json.loads((tmp_path / "chain_state.json").read_text()) == {
        "format": "avatar3d.chain-state/1", "done": ["guidance", "report"]}


def test_chain_state_of_another_format_is_refused_in_one_line(tmp_path):
    (tmp_path / "chain_state.json").write_text('["guidance"]')  # an unversioned state
    cfg = load_config(ChainConfig, DEMO, [f"output_dir={tmp_path}", "stages=[guidance]"])
    with pytest.raises(ConfigError, match="this avatar3d reads 'avatar3d.chain-state/1'") as err:
        run_chain(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "guidance").exists()


def test_report_shows_dataset_and_gan_samples(tmp_path, head_dataset):
    import shutil

    import torch

    from avatar3d.gan import GANConfig, TriPlaneGenerator
    from avatar3d.gan.snapshot import save_snapshot
    from avatar3d.training.job import FINAL_SNAPSHOT
    from tests.training.fixtures import MICRO_GAN

    shutil.copytree(head_dataset, tmp_path / "dataset")
    cfg = GANConfig.tiny(**{**MICRO_GAN, "sr_channels": (16, 16)})
    torch.manual_seed(0)
    save_snapshot(tmp_path / "gan" / "run" / FINAL_SNAPSHOT, TriPlaneGenerator(cfg), cfg.to_dict(), {"kimg": 0.5})
    page = write_report(tmp_path, f"sqlite:///{tmp_path}/mlflow.db").read_text()
    for name in ("dataset_front.png", "dataset_side.png", "dataset_back.png", "gan_front.png", "gan_back.png"):
        assert name in page and (tmp_path / "report" / name).is_file()
    assert "0.500 kimg" in page


def test_the_demo_paints_512_images_of_64_px_and_continues_the_shipped_state_for_1_2_kimg(tmp_path):
    """README: "the 512 images (64 px) are painted by the procedural painter"; "continuing the shipped
    28.4-kimg state jobs/assets/gan_world/ for 1.2 kimg"."""
    from avatar3d.gan.snapshot import read_snapshot_metadata
    from avatar3d.safeio import load_tree

    stages = stage_configs(load_config(ChainConfig, DEMO), tmp_path / "out", "sqlite:///" + str(tmp_path / "m.db"))
    assert (stages.generate.num_samples, stages.generate.resolution) == (512, 64)
    assert stages.generate.pipeline.preset == "procedural"
    state = Path(stages.train.resume)
    assert state == REPO / "jobs" / "assets" / "gan_world"
    # the counter training resumes from (loop_state) and the inference snapshot's record agree: 28.4 kimg
    loop_state = load_tree(state / "loop_state")
    resumed_kimg = int(loop_state["cur_nimg"]) / 1e3
    assert read_snapshot_metadata(state / "snapshot.safetensors")["info"]["kimg"] == resumed_kimg
    assert round(resumed_kimg, 1) == 28.4
    assert round(stages.train.total_kimg - resumed_kimg, 1) == 1.2
    # the demo trains the state's own GAN config, its 5-kimg EMA included (the preset's 0.5 kimg would
    # replace the state's averaged generator within the 1.2 kimg)
    shipped = GANConfig.from_dict(json.loads(loop_state["gan_config"]))
    assert stages.train.model.build() == shipped and (shipped.ema_kimg, shipped.ema_rampup) == (5.0, None)


def test_the_demo_prior_conditions_on_the_shipped_world_encoder(tmp_path):
    """The demo's pairs are embedded by jobs/assets/world_encoder (a folder relative to the demo file), which loads
    as a CLIP vision model does and says what it is."""
    from avatar3d.prior.encoder import load_image_encoder

    stages = stage_configs(load_config(ChainConfig, DEMO), tmp_path / "out", "sqlite:///" + str(tmp_path / "m.db"))
    folder = REPO / "jobs" / "assets" / "world_encoder"
    assert stages.pairs.image_encoder == str(folder) and stages.pairs.num_pairs == 512
    assert stages.pairs.overwrite  # from_stage=prior_pairs rebuilds the chain's own pairs instead of refusing
    encoder = load_image_encoder(stages.pairs.image_encoder)
    images = np.full((2, 64, 64, 3), 255, np.uint8)
    images[0, 16:48, 16:48], images[1, 16:48, 16:48] = (40, 90, 230), (230, 60, 40)  # a blue and a red head
    embedding = encoder.embed(images)
    assert embedding.shape == (2, 64) and torch.isfinite(embedding).all()
    assert float(embedding[0] @ embedding[1]) < 0.5  # trained to keep colour: measured -0.08 (unit vectors)
    assert "not CLIP" in json.loads((folder / "world_encoder.json").read_text())["what"]
