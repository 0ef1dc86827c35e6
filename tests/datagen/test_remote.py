"""Datasets on an object store: read and written through s3:// URIs against a real S3-compatible server
(moto's, started on 127.0.0.1 by tests/s3_server.py), with the same guarantees as a local folder."""
import json
import os

import pytest

from avatar3d.config import ConfigError, load_config
from avatar3d.datagen.config import GenerateConfig
from avatar3d.datagen.dataset import dataset_files, open_dataset, read_table
from avatar3d.datagen.job import run_generation
from avatar3d.datagen.shards import export_eg3d
from tests.s3_server import fresh_prefix, s3_bucket, s3_server  # noqa: F401 - fixtures


def test_a_dataset_in_a_bucket_reads_the_same_rows_as_the_local_folder(s3_bucket, head_dataset):
    uri = s3_bucket.upload_folder(head_dataset, fresh_prefix("ds"))
    local, remote = open_dataset(head_dataset), open_dataset(uri)
    assert type(remote.filesystem).__name__ == "S3FileSystem"
    assert remote.num_rows == local.num_rows == 16 and remote.image_size == local.image_size
    assert [f.rsplit("/", 1)[1] for f in remote.files] == [f.rsplit("/", 1)[1] for f in local.files]
    assert remote.read().equals(local.read())
    assert remote.fingerprint() == local.fingerprint()
    assert read_table(uri, ["id", "view"]).equals(read_table(head_dataset, ["id", "view"]))


def test_a_missing_prefix_in_a_bucket_is_one_line(s3_bucket):
    with pytest.raises(FileNotFoundError, match=r"data.path: s3://.* does not exist") as err:
        open_dataset(s3_bucket.uri("no-such-dataset"))
    assert "\n" not in str(err.value)
    assert dataset_files(s3_bucket.uri("no-such-dataset"))[1] == []


# ------------------------------------------------------------------ avatar3d generate output_dir=s3://...

TINY_YAML = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "generate_tiny.yaml")
PROCEDURAL = ["resolution=32", "pipeline.preset=procedural", "styles=[pixar,anime]", "rows_per_file=4",
              "batch_size=4", "seed=3", "progress_interval_s=0"]


class Killed(Exception):
    pass


def test_generate_into_a_bucket_resumes_to_exactly_n_rows(ray_local, s3_bucket, tmp_path):
    """Shards are single PUTs counted by manifest.json (written after each one, the card last); a run
    interrupted after two shards, plus a shard uploaded but never counted (a kill between the two PUTs),
    resumes to exactly N unique rows, the uncounted shard in quarantine/."""
    n = 12
    prefix = fresh_prefix("gen")
    uri = s3_bucket.uri(prefix)
    overrides = [f"output_dir={uri}", f"num_samples={n}", *PROCEDURAL]

    def stop_after_two(path, rows):
        assert str(path).startswith(uri + "/shards/part-")
        if rows >= 8:
            raise Killed

    with pytest.raises(Killed):
        run_generation(load_config(GenerateConfig, TINY_YAML, [*overrides, "tracking.enabled=false"]),
                       on_shard=stop_after_two)
    manifest = json.loads(s3_bucket.filesystem.open_input_stream(f"{s3_bucket.bucket}/{prefix}/manifest.json").read())
    assert [e["rows"] for e in manifest["shards"]] == [4, 4]
    assert "dataset_card.json" not in s3_bucket.keys(prefix)  # the card comes last
    assert open_dataset(uri).num_rows == 8
    # A complete shard the killed job uploaded but never named in the manifest (here a copy of the first,
    # so counting it would duplicate ids): readers and resume ignore it.
    s3_bucket.filesystem.copy_file(f"{s3_bucket.bucket}/{prefix}/shards/{manifest['shards'][0]['name']}",
                                   f"{s3_bucket.bucket}/{prefix}/shards/part-x-00009.parquet")
    assert open_dataset(uri).num_rows == 8

    cfg = load_config(GenerateConfig, TINY_YAML, [*overrides, f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    result = run_generation(cfg)
    assert result.skipped == 8 and result.generated == n - 8 and result.output_dir == uri
    assert result.card_path == uri + "/dataset_card.json" and result.mlflow_run_id
    keys = s3_bucket.keys(prefix)
    assert "quarantine/part-x-00009.parquet" in keys and "shards/part-x-00009.parquet" not in keys
    assert {"job.json", "specs.parquet", "manifest.json", "dataset_card.json"} <= set(keys)
    assert not [k for k in keys if ".tmp" in k]
    table = open_dataset(uri).read(["id", "index"])
    assert table.column("index").to_pylist() == list(range(n))
    assert len(set(table.column("id").to_pylist())) == n
    card = json.loads(s3_bucket.filesystem.open_input_stream(f"{s3_bucket.bucket}/{prefix}/dataset_card.json").read())
    assert card["complete"] and card["num_rows"] == n and card["num_shards"] == 3
    # Same rows as the same job into a local folder (sample i depends on (seed, i) only).
    local = run_generation(load_config(GenerateConfig, TINY_YAML, [*overrides, f"output_dir={tmp_path / 'local'}",
                                                                   "tracking.enabled=false"]))
    assert read_table(local.output_dir, ["id", "image_png"]).equals(read_table(uri, ["id", "image_png"]))
    assert run_generation(cfg).generated == 0
    export = export_eg3d(uri, tmp_path / "eg3d")  # EG3D's layout, read from the bucket
    assert export.num_images == n and len(list((tmp_path / "eg3d").glob("img*.png"))) == n


def test_object_store_output_dir_needs_a_tracking_store(s3_bucket, monkeypatch):
    from avatar3d.tracking import tracker

    monkeypatch.setattr(tracker, "_USER_TRACKING_URI", None)
    with pytest.raises(ConfigError, match="output_dir=s3://.* on an object store.*tracking.tracking_uri") as err:
        load_config(GenerateConfig, TINY_YAML, [f"output_dir={s3_bucket.uri('x')}", *PROCEDURAL])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("output_dir, pattern", [
    ("file:///tmp/x", "output_dir=file:///tmp/x: pass a local folder as a plain path"),
    ("nosuchscheme://b/x", "output_dir: nosuchscheme://b/x: not a filesystem URI"),
])
def test_bad_output_dir_uris_are_one_line(output_dir, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(GenerateConfig, TINY_YAML, [f"output_dir={output_dir}", *PROCEDURAL])
    assert "\n" not in str(err.value)


def test_sigkilled_job_writing_to_a_bucket_resumes_to_exactly_n_rows(ray_local, s3_bucket):
    """SIGKILL jobs/generate_dataset.py once the bucket holds a counted shard, then re-run it: no torn or
    uncounted object is read, and exactly N unique rows end up counted."""
    import signal
    import subprocess
    import sys
    import time

    n = 24
    prefix = fresh_prefix("kill")
    uri = s3_bucket.uri(prefix)
    overrides = [f"output_dir={uri}", f"num_samples={n}", *PROCEDURAL, "tracking.enabled=false"]
    entry = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "generate_dataset.py")
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    proc = subprocess.Popen([sys.executable, entry, "--config", TINY_YAML, *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def counted() -> bool:  # the manifest (written empty at the start) names a shard
        try:
            with s3_bucket.filesystem.open_input_stream(f"{s3_bucket.bucket}/{prefix}/manifest.json") as fh:
                return bool(json.loads(fh.read()).get("shards"))
        except (OSError, ValueError):  # not there yet, or a busy server: ask again
            return False

    try:
        deadline = time.time() + 180
        while not counted() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs in the job
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    written = open_dataset(uri).num_rows
    assert 0 < written < n
    result = run_generation(load_config(GenerateConfig, TINY_YAML, overrides))
    assert result.skipped == written and result.generated == n - written
    ids = read_table(uri, ["id"]).column("id").to_pylist()
    assert len(ids) == n == len(set(ids))

