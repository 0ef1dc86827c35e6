"""train-gan reads its dataset from an object store: data.path=s3://... against a real S3-compatible server
(moto's, started on 127.0.0.1 by tests/s3_server.py); the Ray Data read tasks on the workers reach it too."""
import os

import pytest
import ray

from avatar3d.config import ConfigError, load_config
from avatar3d.training.config import TrainGANConfig
from avatar3d.training.job import run_train_gan
from tests.s3_server import fresh_prefix, s3_bucket, s3_server  # noqa: F401 - fixtures
from tests.training.fixtures import MICRO_GAN


@pytest.fixture(scope="module")
def ray_with_s3(s3_server):
    """A local Ray started with the server's environment, which its worker processes inherit."""
    _, env = s3_server
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


def test_object_store_output_dir_is_refused_in_one_line(s3_bucket, head_dataset):
    with pytest.raises(ConfigError, match=r"output_dir=s3://.*pass a local") as err:
        run_train_gan(_cfg(s3_bucket.uri("gan"), head_dataset))
    assert "\n" not in str(err.value)
