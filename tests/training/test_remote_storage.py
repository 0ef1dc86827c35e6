"""train-gan on an object store, against a real S3-compatible server (moto's, started on 127.0.0.1 by
tests/s3_server.py): data.path=s3://... (the Ray Data read tasks on the workers reach it too) and
output_dir=s3://... (Ray Train checkpoints, config.yaml, the final snapshot; a re-run resumes from there)."""
import os

import mlflow
import pytest

from avatar3d.config import ConfigError, load_config
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.job import run_train_gan
from tests.s3_server import fresh_prefix, ray_with_s3, s3_bucket, s3_server  # noqa: F401 - fixtures
from tests.training.fixtures import MICRO_GAN


def _cfg(tmp, data, **over):
    overrides = [f"data.path={data}", f"output_dir={tmp}", "batch_size=4", "kimg_per_tick=0.008",
                 "total_kimg=0.008", "max_failures=0", "scaling.num_workers=1", "scaling.strategy=plain",
                 "tracking.register=false", *[f"{k}={v}" for k, v in over.items()]]
    cfg = load_config(TrainGANConfig, None, overrides)
    cfg.model.overrides = dict(MICRO_GAN)
    return cfg


def test_train_gan_reads_its_dataset_from_a_bucket(ray_with_s3, s3_bucket, head_dataset, tmp_path):
    uri = s3_bucket.upload_folder(head_dataset, fresh_prefix("train"))
    cfg = _cfg(tmp_path, uri, run_name="s3data")
    assert cfg.data.path == uri  # a URI stays a URI (it once became the local folder s3:/...)
    result = run_train_gan(cfg)
    assert result.kimg == pytest.approx(0.008) and result.snapshot.is_file()
    assert not (tmp_path / "s3:").exists() and not os.path.exists("s3:")


@pytest.mark.slow  # two training runs, ~45 s
def test_ray_train_checkpoints_go_to_a_bucket_and_a_rerun_resumes_from_them(ray_with_s3, s3_bucket, head_dataset,
                                                                             tmp_path):
    """output_dir=s3://...: Ray Train's storage, config.yaml and the final snapshot are objects in the bucket;
    running the run name again continues from the checkpoint there (kimg 0.008 -> 0.016, one MLflow run)."""
    prefix = fresh_prefix("gan")
    out = s3_bucket.uri(prefix)
    store = {"tracking.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    first = run_train_gan(_cfg(out, head_dataset, run_name="remote", **store))
    assert first.kimg == pytest.approx(0.008) and first.snapshot == f"{out}/remote/network-snapshot-final.safetensors"
    keys = s3_bucket.keys(prefix)
    assert {"remote/config.yaml", "remote/network-snapshot-final.safetensors"} <= set(keys)
    assert any(k.startswith("ray/remote/checkpoint_") for k in keys), keys
    again = run_train_gan(_cfg(out, head_dataset, run_name="remote", total_kimg=0.016, **store))
    assert again.kimg == pytest.approx(0.016) and again.mlflow_run_id == first.mlflow_run_id
    history = mlflow.MlflowClient(tracking_uri=store["tracking.tracking_uri"]).get_metric_history(again.mlflow_run_id,
                                                                                              "kimg")
    assert [m.value for m in history] == pytest.approx([0.008, 0.016])  # continued, not restarted
    assert not list(tmp_path.glob("s3:*")) and not os.path.exists("s3:")


@pytest.mark.parametrize("output_dir, pattern", [
    ("file:///tmp/x", "output_dir=file:///tmp/x: pass a local folder as a plain path"),
    ("nosuchscheme://b/x", "output_dir: nosuchscheme://b/x: not a filesystem URI"),
])
def test_bad_output_dir_uris_are_one_line(head_dataset, output_dir, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        run_train_gan(_cfg(output_dir, head_dataset))
    assert "\n" not in str(err.value)


def test_object_store_output_dir_needs_a_tracking_store(s3_bucket, head_dataset, monkeypatch):
    from avatar3d.tracking import tracker

    monkeypatch.setattr(tracker, "_USER_TRACKING_URI", None)
    with pytest.raises(ConfigError, match="output_dir=s3://.* on an object store.*tracking.tracking_uri") as err:
        run_train_gan(_cfg(s3_bucket.uri("gan"), head_dataset))
    assert "\n" not in str(err.value)
