"""The whole chain in one run at the smallest sizes that still mean something: guidance -> generate ->
train_gan -> evaluate -> prior_pairs -> train_prior -> image_to_avatar -> report, checking what each stage
hands the next (the README's "everything, restartable" row; `make demo` is the same chain at demo size)."""
import json

import pyarrow.parquet as pq
import ray
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image
from safetensors import safe_open

from avatar3d.chain import STAGES, ChainConfig, run_chain
from avatar3d.config import load_config
from tests import CONFIGS


pytestmark = pytest.mark.slow  # about 2 min (four local Ray starts): make test-slow; make demo is the same chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    demo = yaml.safe_load((CONFIGS / "demo_tiny.yaml").read_text())
    spec = {  # the demo's chain, its stage configs by absolute path, at the smallest sizes
        **{k: str(CONFIGS / v) for k, v in demo.items() if k.endswith("_config")},
        "output_dir": str(root / "out"), "guidance_views": 2, "guidance_size": 32,
        "generate_overrides": ["num_samples=24", "rows_per_file=16"],
        # no resume: a fresh tiny GAN, two ticks of eight images
        "train_overrides": ["run_name=e2e-gan", "total_kimg=0.016", "kimg_per_tick=0.008", "batch_size=4",
                            "scaling.strategy=plain", "tracking.register_name=e2e-gan"],
        "evaluate_overrides": ["parts=[fid, walk, mesh]", "fid.num_fakes=8", "fid.batch_size=8", "walk.seeds=[0, 1]",
                               "walk.frames_per_seed=2", "mesh.resolution=24", "mesh.iso=0.5"],
        "prior_pairs_overrides": ["num_pairs=16", "batch_size=8", "max_actors=1"],
        "prior_train_overrides": ["run_name=e2e-prior", "total_steps=4", "steps_per_tick=2", "batch_size=8",
                                  "scaling.strategy=plain", "tracking.register_name=e2e-prior"],
        "image_to_avatar_overrides": ["steps=2", "views=2", "turntable_frames=2", "mesh_resolution=24",
                                      "mesh_iso=0.5"],
        "text_prompt": "a woman with blue hair",
        "text_to_avatar_overrides": ["steps=2", "views=3", "turntable_frames=2", "mesh_resolution=24",
                                     "mesh_iso=0.5"],
    }
    (root / "chain.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_config(ChainConfig, root / "chain.yaml")
    yield cfg, run_chain(cfg)
    ray.shutdown()  # the stages started a local Ray in this process, as the CLI does; later tests start their own


def test_every_stage_ran_once_and_a_rerun_skips_them_all(chain):
    cfg, result = chain
    assert result.ran == list(STAGES) and result.skipped == []
    state = json.loads((result.output_dir / "chain_state.json").read_text())
    assert state["done"] == sorted(STAGES)
    again = run_chain(cfg)
    assert again.ran == [] and again.skipped == list(STAGES)


def test_each_stage_reads_what_the_one_before_wrote(chain):
    _, result = chain
    out = result.output_dir
    snapshot = out / "gan" / "e2e-gan" / "network-snapshot-final.safetensors"
    # generate -> train_gan: 24 unique rows, and the GAN's saved config reads that folder
    ids = pq.read_table(out / "dataset" / "shards", columns=["id"]).column("id").to_pylist()
    assert len(ids) == 24 == len(set(ids))
    assert json.loads((out / "dataset" / "dataset_card.json").read_text())["num_rows"] == 24
    assert yaml.safe_load((out / "gan" / "e2e-gan" / "config.yaml").read_text())["data"]["path"] == str(out / "dataset")
    with safe_open(snapshot, "pt") as f:
        assert f.keys()  # a loadable snapshot of weights
    # train_gan -> evaluate: FID of that snapshot on that dataset, with its protocol
    fid = json.loads((out / "evaluate" / "fid.json").read_text())
    assert fid["protocol"]["model"] == str(snapshot) and fid["protocol"]["dataset"] == str(out / "dataset")
    assert fid["protocol"]["num_fakes"] == 8 and fid["protocol"]["num_real"] == 24 and fid["overall"] > 0
    # train_gan -> prior_pairs -> train_prior: 16 pairs rendered by that generator, and the prior trained on them
    assert pq.read_table(out / "prior_pairs" / "shards").num_rows == 16
    prior = out / "prior" / "e2e-prior" / "prior"
    trained = json.loads((prior / "avatar3d_prior.json").read_text())["trained"]
    assert trained["pairs"] == str(out / "prior_pairs") and trained["num_pairs"] == 16
    assert trained["generator_snapshot"] == str(snapshot) and trained["steps"] == 4
    # train_prior -> image_to_avatar: an avatar of the input the chain wrote, two views as asked
    avatar = json.loads((out / "image_to_avatar" / "avatar.json").read_text())
    assert avatar["input"] == str(out / "image_to_avatar" / "input.png") and avatar["num_inference_steps"] == 2
    assert avatar["prior"] == str(prior) and avatar["generator"] == "the prior's own"
    assert len(list((out / "image_to_avatar").glob("view_yaw*.png"))) == 2 == len(avatar["yaws"])
    # generate's painter + train_prior -> text_to_avatar: the prompt painted by the world's painter at the dataset's
    # size, its attribute mapped, the avatar sampled by that prior
    text = json.loads((out / "text_to_avatar" / "text_to_avatar.json").read_text())
    assert text["prompt"] == "a woman with blue hair"
    assert text["attributes"] == {"hair_color": "blue dyed hair"}  # the vocabulary's value for "blue hair"
    assert text["painted_by"] == "procedural painter"
    size = json.loads((out / "dataset" / "dataset_card.json").read_text())["config"]["resolution"]
    assert Image.open(out / "text_to_avatar" / "painted_front.png").size == (size, size) == (text["resolution"],) * 2
    assert len(list((out / "text_to_avatar").glob("view_yaw*.png"))) == 3 and text["prior"] == str(prior)
    # everything -> the report: the FID figure, a view group too small to score, the avatar
    page = (out / "report" / "index.html").read_text()
    assert f"{fid['overall']:.1f}" in page
    empty = [g for g, n in fid["protocol"]["num_fakes_per_view"].items() if n < 2]
    assert not empty or "n/a (too few images)" in page  # an empty group once crashed the report
    assert "i2a_views.png" in page and (out / "report" / "i2a_views.png").is_file()
    assert "a woman with blue hair" in page and (out / "report" / "t2a_views.png").is_file()


def test_both_models_are_registered_in_the_chains_store(chain):
    _, result = chain
    client = MlflowClient(f"sqlite:///{result.output_dir / 'mlflow.db'}")
    assert [int(v.version) for v in client.search_model_versions("name='e2e-gan'")] == [1]
    assert [int(v.version) for v in client.search_model_versions("name='e2e-prior'")] == [1]
