"""The prior's two jobs on an object store, against a real S3-compatible server (moto's, on 127.0.0.1):
build-prior-pairs output_dir=s3://... (one PUT per shard, the card last) and train-prior pairs=s3://...
output_dir=s3://... (Ray Train's checkpoints, config.yaml and the prior folder in the bucket)."""
import json
from dataclasses import replace

import numpy as np
import pyarrow.fs as pafs
import pytest

from avatar3d.config import ConfigError
from avatar3d.prior.config import BuildPairsConfig
from avatar3d.prior.pairs import check_pairs, read_pairs, run_build_pairs
from tests.s3_server import fresh_prefix, ray_with_s3, s3_bucket, s3_server  # noqa: F401 - fixtures

PAIRS = 24


def _pairs_cfg(out, snapshot, **over) -> BuildPairsConfig:
    return BuildPairsConfig(output_dir=str(out), snapshot=str(snapshot), num_pairs=PAIRS, seed=0, batch_size=8,
                            max_actors=1, **over)


def test_pairs_on_a_bucket_equal_the_local_ones_and_the_card_marks_a_finished_folder(
        ray_with_s3, s3_bucket, micro_snapshot, train_pairs):
    uri = s3_bucket.uri(fresh_prefix("pairs"))
    result = run_build_pairs(_pairs_cfg(uri, micro_snapshot))  # the Ray Data actor pool, as users run it
    assert result.folder == uri and result.num_pairs == PAIRS
    keys = s3_bucket.keys(uri.split("/", 3)[3])  # relative to the prefix
    assert "pairs.json" in keys and any(k.startswith("shards/") and k.endswith(".parquet") for k in keys)

    remote, local = read_pairs(uri, with_images=True), read_pairs(train_pairs, with_images=True)
    assert (remote.index == np.arange(PAIRS)).all() and (remote.seed == local.seed[:PAIRS]).all()
    assert np.allclose(remote.w, local.w[:PAIRS], atol=1e-5)
    assert np.allclose(remote.embedding, local.embedding[:PAIRS], atol=1e-4)
    assert check_pairs(uri).card["num_pairs"] == PAIRS

    # A second run without overwrite is refused in one line; nothing in the bucket changes.
    with pytest.raises(ConfigError, match="already holds pairs; pass overwrite=true"):
        run_build_pairs(_pairs_cfg(uri, micro_snapshot), use_ray=False)
    assert s3_bucket.keys(uri.split("/", 3)[3]) == keys

    # A job killed after the old card was deleted leaves shards but no card: readers refuse it as unfinished.
    s3_bucket.filesystem.delete_file(f"{uri.removeprefix('s3://')}/pairs.json")
    with pytest.raises(FileNotFoundError, match="pairs.json is missing"):
        check_pairs(uri)
    # overwrite=true clears the prefix's shards first: a smaller rebuild leaves no stale shard behind.
    run_build_pairs(replace(_pairs_cfg(uri, micro_snapshot, overwrite=True), num_pairs=8), use_ray=False)
    assert check_pairs(uri).num_rows == 8 and len(read_pairs(uri).index) == 8


@pytest.mark.slow  # a Ray Train run, ~1-2 min on 2 busy cores
def test_train_prior_reads_pairs_from_a_bucket_and_keeps_its_run_there(ray_with_s3, s3_bucket, micro_snapshot,
                                                                        tmp_path):
    from avatar3d.config import load_config
    from avatar3d.prior.config import TrainPriorConfig
    from avatar3d.prior.job import run_train_prior
    from avatar3d.prior.pipeline import ImageToAvatarPipeline

    pairs = s3_bucket.uri(fresh_prefix("pairs"))
    run_build_pairs(_pairs_cfg(pairs, micro_snapshot), use_ray=False)
    out = s3_bucket.uri(fresh_prefix("prior"))
    overrides = [f"pairs={pairs}", f"output_dir={out}", "run_name=remote", "total_steps=4", "steps_per_tick=2",
                 "checkpoint_ticks=1", "batch_size=8", "scaling.strategy=plain", "max_failures=0",
                 f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.register=false"]
    cfg = load_config(TrainPriorConfig, "jobs/configs/prior_train_tiny.yaml", overrides)
    assert cfg.pairs == pairs and cfg.output_dir == out  # URIs stay URIs
    result = run_train_prior(cfg)
    assert result.steps == 4 and result.prior_dir == f"{out}/remote/prior" and result.run_dir == f"{out}/remote"

    keys = s3_bucket.keys(out.split("/", 3)[3])  # relative to the prefix
    assert "remote/config.yaml" in keys and "remote/prior/avatar3d_prior.json" in keys
    assert "remote/pairs.json" in keys  # the pairs the run started on, for a resume to be checked against
    assert any(k.startswith("ray/remote/checkpoint_") for k in keys)  # Ray Train's storage
    assert not list(tmp_path.glob("s3:*"))
    # The uploaded prior folder is the pipeline's own layout: it loads back from a local copy of the objects.
    local = tmp_path / "prior_copy"
    fs = s3_bucket.filesystem
    root = f"{out.removeprefix('s3://')}/remote/prior"
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type == pafs.FileType.File:
            target = local / info.path[len(root) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as fh:
                target.write_bytes(fh.read())
    meta = json.loads((local / "avatar3d_prior.json").read_text())
    assert meta["trained"]["steps"] == 4 and meta["trained"]["pairs"] == pairs
    pipe = ImageToAvatarPipeline.from_pretrained(local)
    assert pipe.prior is not None
