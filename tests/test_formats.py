"""Formats carry versions: today's files (tests/fixtures/formats/) keep loading, unknown versions are refused.

Each fixture was written by tests/fixtures/formats/make_fixtures.py; a test here
failing means a change broke files that users already have (bump the format's
version and keep reading the old one, rather than regenerating the fixture).
Every refusal is one line naming the file, its format and the one this
avatar3d reads. Doctored copies live under tmp_path; the fixtures are read only.
"""
import itertools
import json
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from avatar3d.chain import STATE_FORMAT, read_state
from avatar3d.config import ConfigError
from avatar3d.datagen.dataset import TRAIN_COLUMNS, decode_png, open_dataset, read_table
from avatar3d.datagen.config import LORA_WEIGHTS
from avatar3d.datagen.schema import FORMAT_KEY, FORMAT_VERSION, format_version
from avatar3d.gan.config import GANConfig
from avatar3d.gan.optim import OptimizerSpec
from avatar3d.gan.snapshot import SNAPSHOT_FORMAT, load_snapshot, read_snapshot_metadata
from avatar3d.lora import registry as lora_registry
from avatar3d.lora.registry import LORA_FORMAT, META_FILE, read_lora_meta, register_lora
from avatar3d.prior import loop as prior_loop
from avatar3d.prior import registry as prior_registry
from avatar3d.prior.model import PriorSize, build_prior, train_scheduler
from avatar3d.prior.pairs import PAIRS_FORMAT, check_pairs, read_pairs
from avatar3d.prior.pipeline import PRIOR_FORMAT, PRIOR_JSON, ImageToAvatarPipeline
from avatar3d.prior.registry import register_prior
from avatar3d.safeio import TREE_FORMAT, TREE_STRUCTURE, load_tree, save_tree
from avatar3d.training import loop as gan_loop
from avatar3d.training import registry as gan_registry
from avatar3d.training.data import decode_batch
from avatar3d.training.engines import make_engine
from avatar3d.training.registry import FORMAT_KEY as MODEL_FORMAT_KEY
from avatar3d.training.registry import register_generator

torch.set_num_threads(1)
FIX = Path(__file__).resolve().parent / "fixtures" / "formats"
SHIPPED_STATE = Path(__file__).resolve().parents[1] / "jobs" / "assets" / "gan_world"


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def copy(name: str, tmp_path: Path) -> Path:
    src, dst = FIX / name, tmp_path / name
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    return dst


def retag_tree(folder: Path, fmt: str | None) -> None:
    """Rewrite a state tree with ``format`` set to ``fmt`` (or without it: a state written before the tag)."""
    state = load_tree(folder)
    state.pop("format", None)
    save_tree(state if fmt is None else {"format": fmt, **state}, folder)


# -- datasets -----------------------------------------------------------------------------------------

def test_dataset_v2_fixture_reads_with_its_truth_columns():
    ds = open_dataset(FIX / "dataset_v2", columns=TRAIN_COLUMNS)
    assert (ds.num_rows, len(ds.files), ds.image_size) == (8, 2, (32, 32))
    assert {format_version(pq.read_schema(f)) for f in ds.files} == {FORMAT_VERSION} == {2}
    table = ds.read(["id", "view", "camera", "truth_camera", "truth_failure", "truth_silhouette", "image_png"])
    rows = table.to_pydict()
    assert len(rows["id"]) == 8 and all(len(c) == 25 for c in rows["camera"] + rows["truth_camera"])
    assert set(rows["truth_failure"]) <= {"none", "pose_error", "janus", "flip"}
    assert decode_png(rows["image_png"][0]).shape == (32, 32, 3)
    assert all(rows["truth_silhouette"])


def test_dataset_v1_fixture_reads_without_truth_columns():
    ds = open_dataset(FIX / "dataset_v1", columns=TRAIN_COLUMNS)
    assert (ds.num_rows, ds.image_size) == (4, (32, 32))
    assert format_version(pq.read_schema(ds.files[0])) == 1
    assert "truth_camera" not in ds.columns and "camera" in ds.columns
    v2_ids = read_table(FIX / "dataset_v2", ["id"]).column("id").to_pylist()
    assert read_table(FIX / "dataset_v1", ["id"]).column("id").to_pylist() == v2_ids[:4]


def test_dataset_shard_of_an_unknown_version_is_refused(tmp_path):
    shard = sorted((FIX / "dataset_v2" / "shards").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    (tmp_path / "shards").mkdir()
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, FORMAT_KEY: b"9"}),
                   tmp_path / "shards" / shard.name)
    with pytest.raises(ValueError) as excinfo:
        open_dataset(tmp_path)
    assert f"shard {shard.name} is dataset format v9, this avatar3d reads v1, v2" in one_line(excinfo)


# -- the GAN: inference snapshot, resume state ----------------------------------------------------------

def test_gan_snapshot_fixture_loads_and_renders():
    snap = load_snapshot(FIX / "gan_snapshot.safetensors")
    assert snap.info == {"kimg": 0.008, "tick": 2, "neural_rendering_resolution": 16}
    cfg = GANConfig.from_dict(snap.gan_config)
    assert (cfg.z_dim, cfg.w_dim, cfg.output_resolution, cfg.plane_channels) == (8, 8, 32, 8)
    from avatar3d.scene.cameras import camera_label

    c = torch.tensor(camera_label([0.0], [0.0]), dtype=torch.float32)
    with torch.no_grad():
        image = snap.generator(torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(0)), c,
                               noise_mode="const").image
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    # The checkpoint's own snapshot is the same file.
    assert (FIX / "gan_resume" / gan_loop.SNAPSHOT_FILE).read_bytes() == (FIX / "gan_snapshot.safetensors").read_bytes()


def test_gan_snapshot_of_an_unknown_version_is_refused(tmp_path):
    from safetensors import safe_open

    with safe_open(str(FIX / "gan_snapshot.safetensors"), "pt") as fh:
        meta = fh.metadata()
    path = tmp_path / "g.safetensors"
    save_file(load_file(str(FIX / "gan_snapshot.safetensors")), str(path),
              metadata={**meta, "format": "avatar3d.gan-snapshot/9"})
    with pytest.raises(ValueError) as excinfo:
        load_snapshot(path)
    assert one_line(excinfo) == (f"{path} has format 'avatar3d.gan-snapshot/9', this avatar3d reads "
                                 f"{SNAPSHOT_FORMAT!r}; load it with the avatar3d release that wrote it")
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "something-else/1"})
    with pytest.raises(ValueError, match="is not an avatar3d generator snapshot"):
        read_snapshot_metadata(path)


def _gan_trainer():
    cfg = GANConfig.from_dict(read_snapshot_metadata(FIX / "gan_snapshot.safetensors")["gan_config"])
    return gan_loop.build_trainer(cfg, None, seed=0, rank=0, world_size=1, device="cpu")


def test_gan_resume_fixture_resumes_and_trains_on():
    state = gan_loop.read_resume_state(FIX / "gan_resume")
    assert state["format"] == gan_loop.RESUME_FORMAT
    assert gan_loop.peek_batch_idx(FIX / "gan_resume") == 2
    trainer = _gan_trainer()
    gan_loop.load_resume_state(trainer, FIX / "gan_resume", rank=0)
    assert (trainer.cur_nimg, trainer.batch_idx) == (8, 2)
    snapshot = load_file(str(FIX / "gan_snapshot.safetensors"))
    for name, value in trainer.G_ema.state_dict().items():
        assert torch.equal(value, snapshot[name]), name
    assert trainer.opt_G.state_dict()["state"] and trainer.opt_D.state_dict()["state"]  # Adam moments came back
    # ... and training continues from there.
    rows = read_table(FIX / "dataset_v2", ["image_png", "camera"]).to_pydict()
    batches = (decode_batch({c: rows[c][4 * (k % 2):4 * (k % 2) + 4] for c in rows}, 32, True,
                            np.random.default_rng([7, k])) for k in itertools.count(2))
    reported = []
    result = gan_loop.training_loop(trainer, batches, gan_loop.LoopOptions(total_kimg=0.012, kimg_per_tick=0.004,
                                                                           snapshot_ticks=100, image_ticks=100),
                                    gan_loop.LoopHooks(report=lambda m, c: reported.append((m["kimg"], c)),
                                                       print=lambda *_: None))
    assert result.cur_nimg == 12 and [kimg for kimg, _ in reported] == [0.012]
    assert not any(Path(c).exists() for _, c in reported)  # the loop removed its temporary checkpoint folder


def test_gan_resume_state_of_an_unknown_version_is_refused(tmp_path):
    folder = copy("gan_resume", tmp_path)
    retag_tree(folder / gan_loop.STATE_TREE, "avatar3d.gan-resume/9")
    for read in (lambda: gan_loop.load_resume_state(_gan_trainer(), folder, rank=0),
                 lambda: gan_loop.peek_batch_idx(folder)):
        with pytest.raises(ValueError) as excinfo:
            read()
        assert one_line(excinfo).startswith(
            f"resume: {folder / gan_loop.STATE_TREE} has format 'avatar3d.gan-resume/9', this avatar3d reads "
            f"{gan_loop.RESUME_FORMAT!r}; resume with the avatar3d release that wrote it")


def test_untagged_resume_states_read_as_version_1_and_the_shipped_state_is_tagged(tmp_path):
    # The shipped demo state (jobs/assets/gan_world) was untagged until 2026-12-06 (then continued to 28.4
    # kimg by today's loop); it now carries today's tags, and the untagged fixture stands for the old ones.
    assert json.loads((SHIPPED_STATE / gan_loop.STATE_TREE / TREE_STRUCTURE).read_text())["format"] == TREE_FORMAT
    state = gan_loop.read_resume_state(SHIPPED_STATE)
    assert state["format"] == gan_loop.RESUME_FORMAT and gan_loop.peek_batch_idx(SHIPPED_STATE) > 0
    assert json.loads(state["gan_config"])["output_resolution"] > 0
    # The fixture with its tag removed resumes like the tagged one.
    folder = copy("gan_resume", tmp_path)
    retag_tree(folder / gan_loop.STATE_TREE, None)
    trainer = _gan_trainer()
    gan_loop.load_resume_state(trainer, folder, rank=0)
    assert trainer.cur_nimg == 8


def test_trees_record_their_encoding_and_refuse_an_unknown_one(tmp_path):
    structure = json.loads((FIX / "gan_resume" / "G" / TREE_STRUCTURE).read_text())
    assert structure["format"] == TREE_FORMAT
    save_tree({"a": torch.ones(2), "b": (1, "x")}, tmp_path / "t")
    path = tmp_path / "t" / TREE_STRUCTURE
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc["tree"]))  # version 1: the bare structure, no tag
    back = load_tree(tmp_path / "t")
    assert torch.equal(back["a"], torch.ones(2)) and back["b"] == (1, "x")
    path.write_text(json.dumps({**doc, "format": "avatar3d.tree/9"}))
    with pytest.raises(ValueError) as excinfo:
        load_tree(tmp_path / "t")
    assert one_line(excinfo).startswith(f"{path} has format 'avatar3d.tree/9', this avatar3d reads {TREE_FORMAT!r}")


# -- the prior: pairs, resume state, prior folder --------------------------------------------------------

def test_prior_pairs_fixture_reads():
    info = check_pairs(FIX / "prior_pairs")
    assert info.card["format"] == PAIRS_FORMAT and (info.num_rows, info.w_dim, info.embed_dim) == (16, 8, 32)
    pairs = read_pairs(FIX / "prior_pairs", with_images=True)
    assert pairs.w.shape == (16, 8) and pairs.embedding.shape == (16, 32) and len(pairs.image_png) == 16
    assert np.allclose(np.linalg.norm(pairs.embedding, axis=1), 1.0, atol=1e-4)


def test_prior_pairs_of_an_unknown_version_are_refused(tmp_path):
    folder = copy("prior_pairs", tmp_path)
    card = json.loads((folder / "pairs.json").read_text())
    (folder / "pairs.json").write_text(json.dumps({**card, "format": "avatar3d.prior-pairs/9"}))
    with pytest.raises(ValueError) as err:
        check_pairs(folder)
    text = one_line(err)
    assert text.startswith("pairs: ") and "prior-pairs/9" in text and str(folder) in text


def _prior_trainer():
    prior = build_prior(8, 32, PriorSize(num_attention_heads=2, attention_head_dim=8, num_layers=1))
    return prior_loop.PriorTrainer(make_engine(prior, OptimizerSpec(lr=1e-3, betas=(0.9, 0.999)), "plain"),
                                   train_scheduler("sample", 100), seed=0)


def test_prior_resume_fixture_resumes():
    assert prior_loop.read_resume_state(FIX / "prior_resume")["format"] == prior_loop.RESUME_FORMAT
    assert prior_loop.peek_step(FIX / "prior_resume") == 4
    trainer = _prior_trainer()
    prior_loop.load_resume_state(trainer, FIX / "prior_resume", rank=0)
    assert (trainer.step_count, trainer.pairs_seen) == (4, 32)
    saved = load_file(str(FIX / "prior_resume" / prior_loop.WEIGHTS_DIR / "diffusion_pytorch_model.safetensors"))
    for name, value in trainer.prior.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_prior_resume_state_of_an_unknown_version_is_refused_and_an_untagged_one_read(tmp_path):
    folder = copy("prior_resume", tmp_path)
    retag_tree(folder / prior_loop.STATE_TREE, "avatar3d.prior-resume/9")
    for read in (lambda: prior_loop.load_resume_state(_prior_trainer(), folder, rank=0),
                 lambda: prior_loop.peek_step(folder)):
        with pytest.raises(ValueError) as excinfo:
            read()
        assert one_line(excinfo).startswith(
            f"resume: {folder / prior_loop.STATE_TREE} has format 'avatar3d.prior-resume/9', this avatar3d reads "
            f"{prior_loop.RESUME_FORMAT!r}")
    retag_tree(folder / prior_loop.STATE_TREE, None)
    assert prior_loop.peek_step(folder) == 4


def test_prior_folder_fixture_loads_and_samples():
    pipe = ImageToAvatarPipeline.from_pretrained(FIX / "prior")
    assert pipe.prior.config.embedding_dim == 8 and pipe.image_encoder.dim == 32 and pipe.generator.w_dim == 8
    assert pipe.defaults == {"sampler": "ddim", "num_inference_steps": 4, "guidance_scale": 2.0}
    image = decode_png(read_pairs(FIX / "prior_pairs", with_images=True).image_png[0])
    out = pipe(image, seed=0, yaws=[0.0])
    assert out.w.shape == (1, 8) and out.views.shape == (1, 1, 32, 32, 3) and torch.isfinite(out.w).all()


def test_prior_folder_of_an_unknown_version_is_refused(tmp_path):
    folder = tmp_path / "prior"
    folder.mkdir()
    meta = json.loads((FIX / "prior" / PRIOR_JSON).read_text())
    assert meta["format"] == PRIOR_FORMAT
    (folder / PRIOR_JSON).write_text(json.dumps({**meta, "format": "avatar3d.w-prior/9"}))
    with pytest.raises(ValueError) as excinfo:
        ImageToAvatarPipeline.from_pretrained(folder)
    assert one_line(excinfo).startswith(f"prior: {folder / PRIOR_JSON} has format 'avatar3d.w-prior/9', this "
                                        f"avatar3d reads {PRIOR_FORMAT!r}")


# -- the chain's state, the LoRA folder ------------------------------------------------------------------

def test_chain_state_fixture_reads_and_an_unknown_version_is_refused(tmp_path):
    assert read_state(FIX) == {"guidance", "generate"}
    state = json.loads((FIX / "chain_state.json").read_text())
    assert state["format"] == STATE_FORMAT
    (tmp_path / "chain_state.json").write_text(json.dumps({**state, "format": "avatar3d.chain-state/9"}))
    with pytest.raises(ConfigError) as excinfo:
        read_state(tmp_path)
    assert f"{tmp_path / 'chain_state.json'} has format 'avatar3d.chain-state/9'" in one_line(excinfo)


def test_lora_meta_fixture_reads_and_an_unknown_version_is_refused(tmp_path):
    meta = read_lora_meta(FIX / "lora")
    assert meta["format"] == LORA_FORMAT
    assert (meta["token"], meta["preset"], meta["rank"], meta["resolution"]) == ("<grn>", "tiny", 8, 32)
    folder = copy("lora", tmp_path)
    untagged = {k: v for k, v in meta.items() if k != "format"}
    (folder / META_FILE).write_text(json.dumps(untagged))
    assert read_lora_meta(folder) == untagged  # written before the tag: version 1
    (folder / META_FILE).write_text(json.dumps({**meta, "format": "avatar3d.lora/9"}))
    with pytest.raises(ValueError) as excinfo:
        read_lora_meta(folder)
    assert one_line(excinfo).startswith(f"lora: {folder / META_FILE} has format 'avatar3d.lora/9', this avatar3d "
                                        f"reads {LORA_FORMAT!r}")


def test_lora_train_writes_the_lora_format(tmp_path, monkeypatch):
    """save_lora (lora-train's writer) tags the metadata; the weights' writer (diffusers') is stubbed out."""
    from diffusers import StableDiffusionPipeline

    from avatar3d.lora import train

    monkeypatch.setattr(train, "lora_state_dicts", lambda unet, text_encoder: {})
    monkeypatch.setattr(StableDiffusionPipeline, "save_lora_weights", lambda *args, **kwargs: None)
    meta = {k: v for k, v in json.loads((FIX / "lora" / META_FILE).read_text()).items() if k != "format"}
    folder = train.save_lora(tmp_path / "lora", None, None, meta, meta["caption"], "grn")
    assert read_lora_meta(folder) == {"format": LORA_FORMAT, **meta}


# -- registered models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The three kinds of model, registered from the fixtures in a temporary store, downloaded as folders."""
    root = tmp_path_factory.mktemp("registry")
    lora_dir = root / "lora"
    shutil.copytree(FIX / "lora", lora_dir)
    save_file({}, str(lora_dir / LORA_WEIGHTS))  # the weights' format is diffusers', not ours
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("formats", artifact_location=str(root / "artifacts"))
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            versions = {"gan": register_generator(FIX / "gan_snapshot.safetensors", "fmt-gan"),
                        "prior": register_prior(FIX / "prior", "fmt-prior"),
                        "lora": register_lora(lora_dir, "fmt-lora")}
        models = {}
        for kind, version in versions.items():
            name = version.split("/")[0]
            info = mlflow.models.get_model_info(f"models:/{name}/1")
            models[kind] = {"metadata": info.metadata,
                            "path": Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1",
                                                                             dst_path=str(root / kind)))}
    finally:
        mlflow.set_tracking_uri("")
    return models


MODULES = {"gan": gan_registry, "prior": prior_registry, "lora": lora_registry}


@pytest.fixture
def load_model(monkeypatch):
    """mlflow.pyfunc.load_model, leaving sys.path as it was (it prepends the model's code folder)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    return mlflow.pyfunc.load_model


def _retag(model: Path, tmp_path: Path, fmt: str | None) -> Path:
    """A copy of a downloaded model whose format artifact records ``fmt``; ``None``: a model registered before
    the tag (no format artifact, no metadata)."""
    dst = tmp_path / model.name
    shutil.copytree(model, dst)
    doc = yaml.safe_load((dst / "MLmodel").read_text())
    entry = doc["flavors"]["python_function"]["artifacts"][MODEL_FORMAT_KEY]
    if fmt is None:
        del doc["flavors"]["python_function"]["artifacts"][MODEL_FORMAT_KEY]
        doc.pop("metadata")
        (dst / entry["path"]).unlink()
        (dst / "MLmodel").write_text(yaml.safe_dump(doc))
    else:
        (dst / entry["path"]).write_text(json.dumps({"format": fmt}))
    return dst


@pytest.mark.parametrize("kind", ["gan", "prior", "lora"])
def test_registered_models_record_their_format_and_refuse_an_unknown_one(registered, kind, tmp_path, load_model):
    module, model = MODULES[kind], registered[kind]
    assert model["metadata"] == {MODEL_FORMAT_KEY: module.MODEL_FORMAT}
    recorded = model["path"] / "artifacts" / gan_registry.FORMAT_FILE
    assert json.loads(recorded.read_text()) == {"format": module.MODEL_FORMAT}
    wanted = f"{module.MODEL_FORMAT.rpartition('/')[0]}/9"
    doctored = _retag(model["path"], tmp_path, wanted)
    with pytest.raises(ValueError) as excinfo:
        load_model(str(doctored))
    assert one_line(excinfo).startswith(
        f"model: {doctored / 'artifacts' / gan_registry.FORMAT_FILE} has format {wanted!r}, this avatar3d reads "
        f"{module.MODEL_FORMAT!r}; load it in a fresh process")


def test_registered_generator_loads_tagged_and_untagged(registered, tmp_path, load_model):
    for path in (registered["gan"]["path"], _retag(registered["gan"]["path"], tmp_path, None)):
        images = load_model(str(path)).predict(pd.DataFrame({"seed": [0], "yaw": [30.0]}))
        assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8


def test_registered_prior_and_lora_load(registered, tmp_path, load_model):
    prior = load_model(str(registered["prior"]["path"]))
    png = read_pairs(FIX / "prior_pairs", with_images=True).image_png[0]
    assert prior.predict(pd.DataFrame({"image": [png], "seed": [0]})).shape == (1, 8)
    lora = load_model(str(_retag(registered["lora"]["path"], tmp_path, None)))  # untagged: version 1
    assert lora.unwrap_python_model().meta["token"] == "<grn>"
