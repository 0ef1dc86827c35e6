"""The Ray Data generation job on a local 2-CPU Ray with the tiny preset.

One module-scoped Ray and one reference dataset (16 rows, 2 styles, hybrid);
the other tests compare against it: same seed -> same PNG bytes, kill and
resume -> exactly N unique rows, export -> EG3D layout.
"""
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from PIL import Image  # noqa: E402

from avatar3d.config import ConfigError, load_config  # noqa: E402
from avatar3d.datagen.job import GenerateConfig, run_generation  # noqa: E402
from avatar3d.datagen.schema import ROW_SCHEMA  # noqa: E402
from avatar3d.datagen.shards import export_eg3d, list_shards, read_dataset  # noqa: E402
from avatar3d.datagen.specs import sample_specs  # noqa: E402

TINY_YAML = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "generate_tiny.yaml")
ENTRYPOINT = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "generate_dataset.py")
SD15_YAML = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "generate_sd15.yaml")
N = 16


def tiny_config(output_dir, *overrides):
    return load_config(GenerateConfig, TINY_YAML, [f"output_dir={output_dir}", "progress_interval_s=0", *overrides])


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    """16 rows, 2 styles, hybrid guidance, 3 shards (rows_per_file=6), MLflow on."""
    out = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(out, f"num_samples={N}", "rows_per_file=6")
    result = run_generation(cfg)
    return cfg, result, read_dataset(out)


def _png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_rows_schema_and_counts(reference):
    cfg, result, table = reference
    assert result.num_rows == result.generated == N and result.skipped == 0
    assert table.schema.remove_metadata() == ROW_SCHEMA
    assert table.num_rows == N and len(set(table.column("id").to_pylist())) == N
    assert table.column("index").to_pylist() == list(range(N))
    assert sorted(set(table.column("style").to_pylist())) == ["anime", "pixar"]
    assert table.column("style").to_pylist().count("pixar") == N // 2
    assert set(table.column("guidance").to_pylist()) == {"hybrid"}
    assert set(table.column("base_model").to_pylist()) == {"avatar3d/tiny-random-sd"}
    assert table.column("controlnets").to_pylist()[0] == [
        "avatar3d/tiny-random-controlnet-openpose", "avatar3d/tiny-random-controlnet-depth"]
    shard_rows = [pq.ParquetFile(p).metadata.num_rows for p in list_shards(cfg.output_dir)]
    assert sorted(shard_rows) == [4, 6, 6] and result.shards_written == 3


def test_images_decode_at_configured_size_and_differ(reference):
    _, _, table = reference
    images = [_png(b) for b in table.column("image_png").to_pylist()]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images)
    assert set(table.column("width").to_pylist()) == {64} == set(table.column("height").to_pylist())
    # Different seeds/prompts/cameras paint different images.
    assert len({im.tobytes() for im in images}) == N


def test_stored_specs_equal_planned_specs(reference):
    cfg, _, table = reference
    specs = sample_specs(N, seed=cfg.seed, guidance="hybrid", styles=cfg.resolved_styles())
    rows = table.to_pylist()
    for spec, row in zip(specs, rows):
        for key, value in spec.to_dict().items():
            assert row[key] == value, (spec.id, key)
        assert len(row["camera"]) == 25
        assert isinstance(json.loads(row["attributes"]), dict)
    assert pq.read_table(os.path.join(cfg.output_dir, "specs.parquet")).num_rows == N


def test_dataset_card_and_mlflow_run(reference):
    cfg, result, table = reference
    card = json.loads(open(result.card_path).read())
    assert card["num_rows"] == card["num_unique_ids"] == N and card["complete"]
    assert card["counts"]["style"] == {"anime": N // 2, "pixar": N // 2}
    assert sum(card["counts"]["coarse_bin"].values()) == N == sum(card["counts"]["view"].values())
    assert card["config"]["pipeline"]["preset"] == "tiny" and card["model_ids"]["base_model"] == "avatar3d/tiny-random-sd"
    assert card["timings"]["images_per_s"] > 0 and card["timings"]["per_image_s"]["diffusion"] > 0
    # The driver's share per row (evaluation/datagen/bench_driver.py): CPU seconds and the bytes it received.
    assert card["timings"]["driver_cpu_s_per_row"] > 0
    png_bytes = sum(len(b) for b in table.column("image_png").to_pylist()) / N
    assert card["timings"]["driver_bytes_per_row"] >= png_bytes

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{os.path.abspath(cfg.output_dir)}/mlflow.db")
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["num_rows"] == N and run.data.metrics["images_per_s"] > 0
    assert run.data.params["pipeline.preset"] == "tiny" and run.data.params["num_samples"] == str(N)


def test_same_seed_same_png_bytes_with_other_batching(reference, tmp_path):
    # Fewer samples, other batch size and shard size: rows 0..5 must be byte-identical.
    _, _, table = reference
    cfg = tiny_config(tmp_path, "num_samples=6", "batch_size=3", "rows_per_file=100", "tracking.enabled=false")
    run_generation(cfg)
    again = read_dataset(tmp_path)
    assert again.column("image_png").to_pylist() == table.column("image_png").to_pylist()[:6]


def test_killed_job_resumes_to_exactly_n_unique_rows(ray_local, reference, tmp_path):
    """SIGKILL a real job (jobs/generate_dataset.py on this Ray) after its first shard, then re-run it."""
    _, _, table = reference
    n = 24
    overrides = [f"num_samples={n}", "rows_per_file=4", "batch_size=4", "tracking.enabled=false"]
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    proc = subprocess.Popen([sys.executable, ENTRYPOINT, "--config", TINY_YAML, *overrides, f"output_dir={tmp_path}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not list((tmp_path / "shards").glob("*.parquet")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup code runs in the job
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    written = sum(pq.read_table(p, columns=["id"]).num_rows for p in list_shards(tmp_path))
    assert 0 < written < n
    # What a kill during a write can also leave: a temp file and a truncated shard.
    (tmp_path / "shards" / "part-x-00009.parquet.tmp").write_bytes(b"PAR1 half")
    data = list_shards(tmp_path)[0].read_bytes()
    (tmp_path / "shards" / "part-x-00010.parquet").write_bytes(data[: len(data) // 2])

    result = run_generation(tiny_config(tmp_path, *overrides))
    assert result.skipped == written and result.generated == n - written
    assert not list((tmp_path / "shards").glob("*.tmp"))
    ids = []
    for path in list_shards(tmp_path):
        ids += pq.read_table(path).column("id").to_pylist()  # every file readable
    assert len(ids) == n == len(set(ids))
    resumed = read_dataset(tmp_path)
    assert resumed.column("image_png").to_pylist()[:N] == table.column("image_png").to_pylist()
    first_card = json.loads((tmp_path / "dataset_card.json").read_text())
    assert run_generation(tiny_config(tmp_path, *overrides)).generated == 0
    # The no-op re-run keeps the earlier run's timings in the card's history instead of losing them.
    card = json.loads((tmp_path / "dataset_card.json").read_text())
    assert card["history"][-1] == {k: first_card[k] for k in ("created_at", "num_rows", "timings")}
    assert (tmp_path / "quarantine" / "part-x-00010.parquet").is_file()  # the truncated shard, kept aside


def test_resume_scan_removes_debris_quarantines_unreadable_shards_and_counts_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avatar3d.datagen.shards import ShardWriter, scan_for_resume

    schema = pa.schema([("id", pa.string())])
    writer = ShardWriter(tmp_path, rows_per_file=3, run_tag="t", schema=schema)
    seen = []
    writer.add(pa.table({"id": [f"{i:08d}" for i in range(7)]}, schema=schema), on_written=lambda p, r: seen.append(r))
    writer.flush(on_written=lambda p, r: seen.append(r))
    assert seen == [3, 6, 7]
    (tmp_path / "shards" / "part-t-00099.parquet.tmp").write_bytes(b"x")
    (tmp_path / "shards" / "part-t-00098.parquet").write_bytes(b"PAR1 not parquet")
    state = scan_for_resume(tmp_path)
    assert state.done_ids == {f"{i:08d}" for i in range(7)} and state.duplicate_ids == 0
    assert len(state.removed_tmp) == 1 and len(state.quarantined) == 1
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "part-t-00000.parquet", "part-t-00001.parquet", "part-t-00002.parquet"]
    # The unreadable shard is kept, out of the readers' way, not deleted.
    moved, reason = state.quarantined[0]
    assert moved == tmp_path / "quarantine" / "part-t-00098.parquet" and moved.read_bytes() == b"PAR1 not parquet"
    assert reason
    # A readable Parquet file of someone else's schema (no id column) is quarantined too, never deleted.
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "shards" / "part-t-00097.parquet")
    again = scan_for_resume(tmp_path)
    assert [p.name for p, _ in again.quarantined] == ["part-t-00097.parquet"]
    assert pq.read_table(tmp_path / "quarantine" / "part-t-00097.parquet").num_rows == 2


def test_export_eg3d_layout(reference, tmp_path):
    cfg, _, table = reference
    export = export_eg3d(cfg.output_dir, tmp_path)
    labels = json.loads((tmp_path / "dataset.json").read_text())["labels"]
    assert export.num_images == len(labels) == N
    by_name = dict((name, cam) for name, cam in labels)
    for row in table.select(["id", "camera", "image_png"]).to_pylist():
        name = f"img{row['id']}.png"
        assert by_name[name] == row["camera"] and len(by_name[name]) == 25
        assert (tmp_path / name).read_bytes() == row["image_png"]


@pytest.mark.parametrize("override, message", [
    ("styles=[pixar,no_such_style]", "unknown style 'no_such_style'"),
    ("styles=[]", "styles=[] is empty"),
    ("guidance=canny", "guidance"),
    ("resolution=60", "not a multiple of 8"),
    ("num_samples=0", "num_samples"),
    ("max_actors=0", "max_actors"),
])
def test_bad_input_fails_before_any_work(tmp_path, override, message):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg = tiny_config(out, override)
        run_generation(cfg)
    assert not out.exists()


def test_unwritable_output_dir_fails(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="output_dir"):
        tiny_config(blocker / "sub")


def test_changed_seed_on_existing_dataset_is_refused(reference):
    cfg, _, _ = reference
    with pytest.raises(ConfigError, match="seed"):
        run_generation(tiny_config(cfg.output_dir, f"num_samples={N}", "seed=1"))
    with pytest.raises(ConfigError, match="beyond num_samples"):
        run_generation(tiny_config(cfg.output_dir, "num_samples=4", "rows_per_file=6"))


def test_sd15_config_loads_and_missing_models_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(GenerateConfig, SD15_YAML, [f"output_dir={tmp_path / 'sd'}"])
    assert cfg.num_samples == 500_000 and cfg.resolution == 512 and cfg.max_actors == 16
    assert cfg.pipeline.dtype == "float16" and len(cfg.resolved_styles()) == 50
    with pytest.raises(ConfigError) as err:
        run_generation(cfg)
    assert "\n" not in str(err.value) and "stable-diffusion-v1-5" in str(err.value) and "HF_HUB_OFFLINE=0" in str(err.value)
    assert not (tmp_path / "sd").exists()


def test_duplicate_ids_from_two_writers_are_dropped_keeping_the_first_copy(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avatar3d.datagen.shards import ShardWriter, drop_duplicate_rows, list_shards, scan_for_resume

    schema = pa.schema([("id", pa.string()), ("v", pa.int64())], metadata={b"avatar3d.dataset": b"2"})
    for tag, ids in (("a", ["0", "1", "2"]), ("b", ["1", "2", "3"]), ("c", ["0", "3"])):
        writer = ShardWriter(tmp_path, rows_per_file=10, run_tag=tag, schema=schema)
        writer.add(pa.table({"id": ids, "v": [ord(tag)] * len(ids)}, schema=schema))
        writer.flush()
    assert scan_for_resume(tmp_path, clean=False).duplicate_ids == 4
    assert drop_duplicate_rows(tmp_path) == 4
    rows = [r for p in list_shards(tmp_path) for r in pq.read_table(p).to_pylist()]
    assert sorted((r["id"], r["v"]) for r in rows) == [("0", 97), ("1", 97), ("2", 97), ("3", 98)]
    assert [p.name for p in (tmp_path / "quarantine").iterdir()] == ["part-c-00000.parquet"]  # nothing new in c
    assert pq.read_schema(list_shards(tmp_path)[1]).metadata[b"avatar3d.dataset"] == b"2"  # still a dataset shard
    assert scan_for_resume(tmp_path, clean=False).duplicate_ids == 0


def test_driver_joins_an_arrow_block_without_copying_its_pngs(tmp_path):
    """Blocks reach the driver as Arrow: the rows it writes equal those of the numpy path, and the PNG column
    is the block's own buffer (no Python bytes copy per image)."""
    import pyarrow as pa

    from avatar3d.datagen.job import _driver_batch, _rows_for, plan_specs

    cfg = tiny_config(tmp_path, "num_samples=6", "tracking.enabled=false")
    specs = plan_specs(cfg)
    pngs = [bytes([i]) * (1000 + i) for i in range(3)]
    ids = ["00000004", "00000001", "00000005"]
    block = pa.table({"id": ids, "image_png": pa.array(pngs, type=pa.binary()),
                      "guidance_s": [0.1, 0.2, 0.3], "call_start": [1.0, 1.0, 1.0]})
    batch = _driver_batch(block)
    assert list(batch["id"]) == ids and batch["guidance_s"].dtype == np.float64
    model_ids = cfg.pipeline.model_ids()
    rows = _rows_for(specs, batch, model_ids, 64)
    assert rows.equals(_rows_for(specs, {"id": np.array(ids, dtype=object),
                                         "image_png": np.array(pngs, dtype=object)}, model_ids, 64))
    assert rows.column("index").to_pylist() == [4, 1, 5]
    column = rows.column("image_png")
    assert column.chunk(0).buffers()[2].address == block.column("image_png").chunk(0).buffers()[2].address


# ------------------------------------------------------------------ shard_writer=workers


def test_a_staged_shard_counts_once_when_committed_and_is_debris_otherwise(tmp_path):
    """Workers stage, the driver commits: a retried task's second staging is one file, a commit is counted
    once, readers and resume never count a staged shard, and resume removes the uncommitted ones."""
    import pyarrow as pa

    from avatar3d.datagen.shards import (STAGED_PREFIX, ShardWriter, scan_for_resume, stage_shard,
                                         staged_shard_name)

    schema = pa.schema([("id", pa.string())])
    writer = ShardWriter(tmp_path, rows_per_file=3, run_tag="t", schema=schema)
    first = pa.table({"id": ["00000000", "00000001"]}, schema=schema)
    second = pa.table({"id": ["00000002"]}, schema=schema)
    name_a, name_b = staged_shard_name("t", 0), staged_shard_name("t", 2)
    assert stage_shard(str(tmp_path), first, name_a) > 0
    stage_shard(str(tmp_path), first, name_a)  # the same block painted again by a retried task
    stage_shard(str(tmp_path), second, name_b)  # staged, but its job dies before the driver counts it
    assert list_shards(tmp_path) == [] and scan_for_resume(tmp_path, clean=False).done_ids == set()

    seen = []
    path = writer.commit(name_a, 2, on_written=lambda p, rows: seen.append(rows))
    assert writer.commit(name_a, 2, on_written=lambda p, rows: seen.append(rows)) is None  # reported twice
    assert seen == [2] and writer.rows_written == 2 and writer.written == [path]
    assert [p.name for p in list_shards(tmp_path)] == [name_a]
    assert pq.read_table(path).column("id").to_pylist() == ["00000000", "00000001"]

    state = scan_for_resume(tmp_path)
    assert state.done_ids == {"00000000", "00000001"}
    assert [p.name for p in state.removed_tmp] == [STAGED_PREFIX + name_b]
    assert [p.name for p in (tmp_path / "shards").iterdir()] == [name_a]
    with pytest.raises(FileNotFoundError, match="shard_writer=workers, pass an output_dir every node mounts"):
        writer.commit(name_b, 1)  # what a driver sees when a worker wrote to its own node's disk
    with pytest.raises(FileNotFoundError, match="is not visible on this node"):
        stage_shard(str(tmp_path / "not-made"), second, name_b)


class _Stop(Exception):
    pass


def test_workers_write_the_drivers_rows_and_a_killed_run_resumes_to_exactly_n(ray_local, tmp_path):
    """shard_writer=workers: byte-identical rows to the driver's shards, no PNG through the driver, whole
    shards named by their first row; a run stopped after its first commit, with a staged shard it never
    counted (a copy of the committed one: counting it would duplicate ids), resumes to exactly N rows."""
    from avatar3d.datagen.shards import STAGED_PREFIX, staged_shard_name

    n = 10
    common = ["pipeline.preset=procedural", "resolution=32", f"num_samples={n}", "rows_per_file=4",
              "batch_size=3", "tracking.enabled=false"]
    by_driver = run_generation(tiny_config(tmp_path / "driver", *common))
    out = tmp_path / "workers"
    cfg = tiny_config(out, *common, "shard_writer=workers")

    def stop_after_first(path, rows):
        raise _Stop

    with pytest.raises(_Stop):
        run_generation(cfg, on_shard=stop_after_first)
    [committed] = list_shards(out)  # Ray Data does not keep block order: a whole shard of 4, named by its index
    first = pq.read_table(committed).column("index").to_pylist()[0]
    assert first in (0, 4) and pq.read_table(committed).column("index").to_pylist() == list(range(first, first + 4))
    assert committed.name.endswith(f"-i{first:09d}.parquet")
    planted = out / "shards" / (STAGED_PREFIX + staged_shard_name("x", 4))
    planted.write_bytes(committed.read_bytes())

    result = run_generation(cfg)
    assert (result.skipped, result.generated, result.num_rows) == (4, n - 4, n)
    assert not list((out / "shards").glob(STAGED_PREFIX + "*"))
    assert [pq.read_table(p).num_rows for p in list_shards(out)] == [4, 4, 2]
    assert read_dataset(out).equals(read_dataset(by_driver.output_dir))
    # The driver received one small record per shard instead of every PNG.
    assert result.timings["driver_bytes_per_row"] < 100 < by_driver.timings["driver_bytes_per_row"]
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["complete"] and card["config"]["shard_writer"] == "workers"


def test_a_worker_that_cannot_write_its_shard_reports_one_line_instead_of_raising(ray_local, tmp_path):
    """ShardPainter (run here in-process) returns the write's error; the driver turns it into one OSError line."""
    import ray

    from avatar3d.datagen.job import ShardPainter, plan_specs
    from avatar3d.datagen.procedural import ProceduralPainter

    cfg = tiny_config(tmp_path, "num_samples=4", "pipeline.preset=procedural", "resolution=32", "tracking.enabled=false")
    specs = plan_specs(cfg)
    painter = ShardPainter(ProceduralPainter, {"options": cfg.procedural, "resolution": 32}, [ray.put(specs)],
                           str(tmp_path / "not-mounted-here"), "t", cfg.pipeline.model_ids(), 32, 2)
    from ray.data.block import BlockAccessor

    columns = ["id", "seed", "index", "style", "attributes", "view", "yaw", "pitch", "camera"]
    record = painter(BlockAccessor.for_block(specs.select(columns)).to_batch_format("numpy"))  # as Ray Data hands it
    assert list(record["shard"]) == ["part-t-i000000000.parquet"] and list(record["rows"]) == [4]
    [error] = record["error"]
    assert "not-mounted-here/shards is not visible on this node" in error and "\n" not in error
