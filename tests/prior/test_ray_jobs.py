"""The Ray path end to end: pairs on a Ray Data actor pool, then train-prior on Ray Train + DeepSpeed
(1 worker), MLflow tracking, the registry, and serving the registered prior from a fresh process.

Both jobs run through the CLI (``avatar3d.cli.main``), as jobs/build_prior_pairs.py and
jobs/train_prior.py do.
"""
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
import torch
from PIL import Image

from avatar3d.cli import main
from avatar3d.prior.pairs import check_pairs, read_pairs
from avatar3d.prior.pipeline import ImageToAvatarPipeline

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def test_pairs_job_matches_the_in_process_builder(tmp_path, micro_snapshot, train_pairs):
    out = tmp_path / "pairs"
    rc = main(["build-prior-pairs", "--config", str(CONFIGS / "prior_pairs_tiny.yaml"), f"snapshot={micro_snapshot}",
               f"output_dir={out}", "num_pairs=12", "batch_size=4", "max_actors=1"])
    assert rc == 0
    info = check_pairs(out)
    assert info.num_rows == 12 and info.card["num_pairs"] == 12
    ray_pairs, local = read_pairs(out, with_images=True), read_pairs(train_pairs, with_images=True)
    # Row i depends only on (seed, i): the actor pool reproduces the in-process rows.
    assert (ray_pairs.index == np.arange(12)).all() and (ray_pairs.seed == local.seed[:12]).all()
    assert np.allclose(ray_pairs.w, local.w[:12], atol=1e-5)
    assert np.allclose(ray_pairs.embedding, local.embedding[:12], atol=1e-4)


def test_train_prior_job_tracks_registers_and_serves(tmp_path, train_pairs, heldout_pairs, monkeypatch, capsys):
    out = tmp_path / "prior"
    rc = main(["train-prior", "--config", str(CONFIGS / "prior_train_tiny.yaml"), f"pairs={train_pairs}",
               f"output_dir={out}", "run_name=ray-tiny", "total_steps=20", "steps_per_tick=10",
               "checkpoint_ticks=1", "batch_size=32", "scaling.strategy=deepspeed", "scaling.zero_stage=1",
               "tracking.register_name=tiny-prior", "max_failures=0"])
    assert rc == 0
    prior_dir = out / "ray-tiny" / "prior"
    meta = json.loads((prior_dir / "avatar3d_prior.json").read_text())
    assert meta["trained"]["steps"] == 20 and meta["sampling"]["guidance_scale"] == 2.0
    # MLflow: config params, per-tick loss, the prior folder as an artifact, a registered version.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("avatar3d-prior").experiment_id])[0]
    assert run.data.params["train.scaling.zero_stage"] == "1"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "step")] == [10, 20]
    assert np.isfinite(run.data.metrics["loss"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "prior_folder")} >= {
        "prior_folder/prior", "prior_folder/image_encoder", "prior_folder/generator.safetensors"}
    assert client.get_model_version("tiny-prior", "1").run_id == run.info.run_id

    # The registered prior serves from a fresh process: same w as the prior folder loaded here, same seed.
    held = read_pairs(heldout_pairs, with_images=True)
    image_path = tmp_path / "in.png"
    image_path.write_bytes(held.image_png[0])
    code = textwrap.dedent(f"""
        import mlflow, numpy as np, pandas as pd
        mlflow.set_tracking_uri("sqlite:///{out}/mlflow.db")
        model = mlflow.pyfunc.load_model("models:/tiny-prior/1")
        png = open({str(image_path)!r}, "rb").read()
        w = model.predict(pd.DataFrame({{"image": [png, png], "seed": [5, 6]}}))
        front = model.predict(pd.DataFrame({{"image": [png], "seed": [5]}}), params={{"output": "front"}})
        np.save({str(tmp_path / "w.npy")!r}, w)
        np.save({str(tmp_path / "front.npy")!r}, front)
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-2000:]
    served, front = np.load(tmp_path / "w.npy"), np.load(tmp_path / "front.npy")
    pipe = ImageToAvatarPipeline.from_pretrained(prior_dir)
    image = Image.open(io.BytesIO(held.image_png[0]))
    here = pipe(image, seed=5, yaws=[0.0])
    assert served.shape == (2, 32) and np.allclose(served[0], here.w[0].numpy(), atol=1e-5)
    assert not np.allclose(served[0], served[1])  # another seed, another sample
    assert front.shape == (1, 32, 32, 3) and np.abs(front[0].astype(int) - here.views[0, 0]).max() <= 1

    # image-to-avatar takes the registered prior too (--prior models:/name/version).
    from avatar3d.prior.avatar import load_pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out}/mlflow.db")
    registered = load_pipeline("models:/tiny-prior/1")
    assert torch.allclose(registered(image, seed=5, yaws=[0.0]).w, here.w, atol=1e-6)
    with pytest.raises(ValueError, match="cannot fetch models:/tiny-prior/7"):
        load_pipeline("models:/tiny-prior/7")

    # The run records the pairs it started on; resuming it on pairs whose rows mean something else (another
    # seed here) is one line and exit 2, before Ray starts, and the trained run is left as it was.
    assert json.loads((out / "ray-tiny" / "pairs.json").read_text())["seed"] == 0
    capsys.readouterr()
    rc = main(["train-prior", "--config", str(CONFIGS / "prior_train_tiny.yaml"), f"pairs={heldout_pairs}",
               f"output_dir={out}", "run_name=ray-tiny", "total_steps=30", "batch_size=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "run_name=ray-tiny resumes a prior trained on other pairs (seed 0, these " \
        "have 1); pass another run_name" in err[0], err
    assert json.loads((prior_dir / "avatar3d_prior.json").read_text())["trained"]["steps"] == 20


def test_a_run_from_before_the_pairs_record_is_checked_on_its_prior_folder(tmp_path):
    from avatar3d.config import ConfigError
    from avatar3d.prior.config import TrainPriorConfig
    from avatar3d.prior.job import check_same_pairs

    (tmp_path / "prior").mkdir()
    (tmp_path / "prior" / "avatar3d_prior.json").write_text(json.dumps(
        {"image_encoder": "tiny", "trained": {"generator_snapshot": "/g.safetensors"}}))
    cfg = TrainPriorConfig(run_name="old")
    check_same_pairs(tmp_path, {"image_encoder": "tiny", "snapshot": "/g.safetensors", "seed": 4}, cfg)  # agrees
    with pytest.raises(ConfigError, match=r"run_name=old resumes a prior trained on other pairs \(image_encoder "
                                          r"'tiny', these have '/enc'\)"):
        check_same_pairs(tmp_path, {"image_encoder": "/enc", "snapshot": "/g.safetensors"}, cfg)


def test_a_generator_retrained_into_the_same_file_is_other_pairs(tmp_path):
    """The chain writes every generator to the same path: the record keeps a hash of the snapshot's bytes."""
    from avatar3d.config import ConfigError
    from avatar3d.prior.config import TrainPriorConfig
    from avatar3d.prior.job import PAIRS_RECORD, check_same_pairs, pairs_record

    snapshot = tmp_path / "G.safetensors"
    snapshot.write_bytes(b"first generator")
    card = {"snapshot": str(snapshot), "image_encoder": "/enc", "encoder_seed": 0, "seed": 0, "gan_config": {}}
    first = pairs_record(card)
    assert "gan_config" not in first and len(first["snapshot_sha256"]) == 64
    (tmp_path / PAIRS_RECORD).write_text(json.dumps(first))
    cfg = TrainPriorConfig(run_name="r")
    assert check_same_pairs(tmp_path, pairs_record(card), cfg) is True  # same bytes: resumes
    # the encoder seed makes only the tiny encoder: another one with a folder encoder is the same pairs
    assert check_same_pairs(tmp_path, pairs_record({**card, "encoder_seed": 7}), cfg) is True
    snapshot.write_bytes(b"retrained generator")
    with pytest.raises(ConfigError, match="resumes a prior trained on other pairs \\(the generator snapshot's bytes\\)"):
        check_same_pairs(tmp_path, pairs_record(card), cfg)
