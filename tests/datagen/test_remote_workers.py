"""shard_writer=workers into an object store (moto's S3 server): the actors PUT the shards, the driver names
them. A module of its own: its Ray is started with the server's AWS_* variables (``ray_with_s3``), as a job's
own Ray or a cluster job's runtime environment gives them to the workers."""
import json

import pytest

from avatar3d.config import load_config
from avatar3d.datagen.config import GenerateConfig
from avatar3d.datagen.dataset import open_dataset, read_table
from avatar3d.datagen.job import run_generation
from avatar3d.datagen.shards import RemoteFolder, ShardWriter
from tests.datagen.test_remote import PROCEDURAL, TINY_YAML, Killed
from tests.s3_server import fresh_prefix, ray_with_s3, s3_bucket, s3_server  # noqa: F401 - fixtures


def test_workers_write_shards_into_a_bucket_and_the_driver_names_them(ray_with_s3, s3_bucket, tmp_path):
    """shard_writer=workers into s3://: each actor PUTs its shard, the driver only names it in the
    manifest; a run stopped after the first name resumes to exactly N rows, the rows of the local job."""
    n = 10
    prefix = fresh_prefix("workers")
    uri = s3_bucket.uri(prefix)
    overrides = [f"output_dir={uri}", f"num_samples={n}", *PROCEDURAL, "shard_writer=workers", "tracking.enabled=false"]

    def stop_after_first(path, rows):
        raise Killed

    cfg = load_config(GenerateConfig, TINY_YAML, overrides)
    with pytest.raises(Killed):
        run_generation(cfg, on_shard=stop_after_first)
    manifest = json.loads(s3_bucket.filesystem.open_input_stream(f"{s3_bucket.bucket}/{prefix}/manifest.json").read())
    # Ray Data does not keep block order: the first shard committed is a whole one of 4 rows, named by its index
    [(name, rows)] = [(e["name"].rsplit("-", 1)[1], e["rows"]) for e in manifest["shards"]]
    assert (name, rows) in {("i000000000.parquet", 4), ("i000000004.parquet", 4)}
    assert open_dataset(uri).num_rows == 4  # readers count the named shard only
    # The driver names only an object that is there (a worker writing to another store fails in one line).
    with pytest.raises(FileNotFoundError, match="part-x-i000000099.parquet was written by a worker but is not in"):
        ShardWriter(RemoteFolder(uri), rows_per_file=4, run_tag="x").commit("part-x-i000000099.parquet", 4)
    result = run_generation(cfg)
    assert (result.skipped, result.generated, result.num_rows) == (4, n - 4, n)
    table = read_table(uri, ["id", "index"])
    assert table.column("index").to_pylist() == list(range(n)) and len(set(table.column("id").to_pylist())) == n
    local = run_generation(load_config(GenerateConfig, TINY_YAML, [*overrides, f"output_dir={tmp_path / 'local'}",
                                                                   "shard_writer=driver"]))
    assert read_table(local.output_dir, ["id", "image_png"]).equals(read_table(uri, ["id", "image_png"]))
    assert result.timings["driver_bytes_per_row"] < 100
