"""The dataset generation job on Ray Data (docs/method.md section 2).

    specs (driver, persisted) -> guidance images (CPU tasks)
      -> ControlNet painting (autoscaling actor pool, GPUs per actor)
      -> driver (or, with shard_writer=workers, the actors): join with specs,
         Parquet shards of <= rows_per_file rows (atomic; the driver commits)

Who writes the shards (``shard_writer``):

* ``driver`` (default): the workers ship ``id`` + PNG back, the driver joins
  them with the planned spec rows and renames each shard into place. The
  output folder only has to be visible to the driver. Its ceiling, measured
  with a painter that costs nothing (evaluation/datagen/bench_driver.py):
  2.6-3.0 CPU ms per 416 kB row, ~340-380 rows/s on a loaded 2-core machine,
  above a 64-GPU pool (~50/s) but short of 10x it.
* ``workers``: each actor paints one batch of at most ``rows_per_file`` rows,
  joins it with the plan (put in the object store once) and stages the
  shard itself (:class:`ShardPainter`); only its name comes back, and the
  driver, the one committer, counts it (:meth:`ShardWriter.commit`). The name
  is fixed by the batch's lowest index, so a retried task rewrites the same
  staged shard, and a staged shard the driver never committed is debris the
  next resume removes (folder) or quarantines (object store): exactly-once
  however workers die. The folder must be reachable from every node (a
  shared mount or an object store). With a guidance stage in front, Ray Data
  re-bundles the guidance blocks, so a shard's rows need not be contiguous
  indices and some shards are shorter; readers sort by index.

On a CPU-only run (the tiny preset) the guidance and painting stages ask
for the same resources and Ray Data fuses them into the actor; with
``gpus_per_actor > 0`` they differ, so guidance runs as separate CPU tasks
that overlap the GPU work.

Resume: re-running the same job (same ``output_dir``) skips every id found in
a readable shard; leftover temporaries are removed and unreadable shards moved
to ``quarantine/`` first, by the one job that holds the folder's lock. Rows that define the content (seed, styles, models, ...) are
fingerprinted in ``job.json``; a re-run with different ones is refused
before any work, so a folder never mixes two datasets. ``num_samples`` may
grow (sample i depends on (seed, i) only), not shrink.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from avatar3d.config import ConfigError, to_dict
from avatar3d.datagen.config import GenerateConfig, PipelineConfig
from avatar3d.datagen.dataset import MANIFEST_FILE, encode_png, is_remote
from avatar3d.datagen.pipeline import build_pipeline, check_models_available, generate_from_config
from avatar3d.datagen.procedural import ProceduralPainter
from avatar3d.datagen.schema import ROW_SCHEMA, TRUTH_FIELDS
from avatar3d.datagen.shards import (
    CARD_FILE,
    JOB_FILE,
    SPECS_FILE,
    RemoteFolder,
    ShardWriter,
    build_card,
    drop_duplicate_rows,
    scan_for_resume,
    scan_remote_for_resume,
    stage_shard,
    staged_shard_name,
    write_atomic_json,
    write_atomic_table,
)
from avatar3d.datagen.specs import sample_specs, specs_to_table
from avatar3d.lock import folder_lock
from avatar3d.runtime import init_local_ray, set_torch_threads
from avatar3d.scene.cameras import CameraSampler
from avatar3d.scene.guidance import render_guidance
from avatar3d.tracking.tracker import Tracker

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- results


@dataclass
class GenerationResult:
    """What one run did. ``num_rows`` counts the whole dataset, ``generated`` this run only."""

    output_dir: str
    num_samples: int
    num_rows: int
    generated: int
    skipped: int
    shards_written: int
    wall_s: float
    images_per_s: float
    card_path: str
    mlflow_run_id: str | None
    timings: dict

    def summary(self) -> str:
        return (f"{self.num_rows}/{self.num_samples} rows in {self.output_dir} "
                f"({self.generated} generated this run, {self.skipped} already there; "
                f"{self.images_per_s:.2f} images/s over {self.wall_s:.1f} s; card: {self.card_path})")


# --------------------------------------------------------------------------- Ray stages


def render_guidance_batch(batch: dict, resolution: int, kinds: tuple[str, ...]) -> dict:
    """CPU stage: camera labels -> one control image (H, W, 3) uint8 per ControlNet kind."""

    start = time.perf_counter()
    cameras = np.stack([np.asarray(c, dtype=np.float64) for c in batch["camera"]])
    images = {k: [] for k in kinds}
    for label in cameras:
        rendered = render_guidance(label, resolution, kinds=kinds)
        for k in kinds:
            images[k].append(_control_image(rendered, k))
    out = {name: batch[name] for name in ("id", "seed", "prompt", "negative_prompt")}
    for k in kinds:
        out[f"control_{k}"] = np.stack(images[k])
    out["guidance_s"] = np.full(len(cameras), (time.perf_counter() - start) / max(1, len(cameras)))
    return out


def _control_image(rendered, kind: str) -> np.ndarray:
    image = rendered[kind] if isinstance(rendered, dict) else getattr(rendered, kind)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image


class ControlNetPainter:
    """Actor: builds the pipeline once, then paints batches -> ``id`` + PNG bytes."""

    def __init__(self, pipeline: PipelineConfig, resolution: int):
        from diffusers.utils import logging as diffusers_logging  # optional: only the real-weights painter

        # The actor is its own process: quiet diffusers' per-call bars here, and follow Ray's CPU share.
        diffusers_logging.disable_progress_bar()
        set_torch_threads()
        self.cfg = pipeline
        self.pipe = build_pipeline(self.cfg)
        self.resolution = resolution

    def __call__(self, batch: dict) -> dict:

        call_start = time.time()
        start = time.perf_counter()
        controls = [list(batch[f"control_{k}"]) for k in self.cfg.controlnet_kinds]
        images = generate_from_config(
            self.pipe, self.cfg, [str(p) for p in batch["prompt"]], [str(p) for p in batch["negative_prompt"]],
            controls, [int(s) for s in batch["seed"]], self.resolution, self.resolution,
        )
        painted = time.perf_counter()
        pngs = [encode_png(im) for im in images]
        end = time.perf_counter()
        n = len(images)
        return {
            "id": batch["id"],
            "image_png": np.array(pngs, dtype=object),
            "guidance_s": batch["guidance_s"],
            "diffusion_s": np.full(n, (painted - start) / n),
            "png_s": np.full(n, (end - painted) / n),
            # Wall-clock span of this call (same clock as the driver on one node): for benchmarks.
            "call_start": np.full(n, call_start),
            "call_end": np.full(n, time.time()),
        }


class ShardPainter:
    """Actor for ``shard_writer=workers``: paints a whole shard and writes it, so no PNG reaches the driver.

    It gets one batch of at most ``rows_per_file`` rows, paints it ``batch_size``
    rows at a time with the wrapped painter, joins the rows with their planned
    spec rows (the plan is put in the object store once, and read here without
    a copy), and stages the shard under a name fixed by its lowest index
    (:func:`avatar3d.datagen.shards.stage_shard`). Only the name and the counts
    go back (or the write's error, which the driver reports in one line); the
    driver commits the shard. A retried task stages the same name
    again, so a shard is counted once however often its block is painted.
    """

    def __init__(self, painter: type, painter_kwargs: dict, plan: list, output_dir: str, run_tag: str,
                 model_ids: dict, resolution: int, batch_size: int):
        self.painter = painter(**painter_kwargs)
        self.specs = ray.get(plan[0])  # a list, so that Ray hands the reference over instead of resolving it
        self.output_dir, self.run_tag, self.model_ids = output_dir, run_tag, model_ids
        self.resolution, self.batch_size = resolution, batch_size

    def __call__(self, batch: dict) -> dict:
        call_start = time.time()
        n = len(batch["id"])
        parts = [self.painter({k: v[i:i + self.batch_size] for k, v in batch.items()})
                 for i in range(0, n, self.batch_size)]
        generated = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
        rows = _rows_for(self.specs, generated, self.model_ids, self.resolution).sort_by("index")
        name = staged_shard_name(self.run_tag, rows.column("index")[0].as_py())
        write_start = time.perf_counter()
        try:
            nbytes, error = stage_shard(self.output_dir, rows, name), ""
        except OSError as exc:  # e.g. a node that does not see output_dir: the driver says it in one line
            nbytes, error = 0, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        record = {"shard": np.array([name]), "rows": np.array([n]), "shard_bytes": np.array([nbytes]),
                  "write_s": np.array([time.perf_counter() - write_start]), "error": np.array([error])}
        for key in ("guidance_s", "diffusion_s", "png_s"):
            record[key] = np.array([float(np.sum(generated[key]))])
        record["call_start"], record["call_end"] = np.array([call_start]), np.array([time.time()])
        return record


# --------------------------------------------------------------------------- driver


def format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Console progress: rows done, images/s of this run, ETA for the rest."""

    def __init__(self, total: int, already: int, interval_s: float, printer=None):
        self.total, self.already, self.interval_s = total, already, interval_s
        self.printer = printer or log.info
        self.start = time.perf_counter()
        self.done = 0
        self._printed = -1
        self._last = -np.inf

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if (force and self.done != self._printed) or now - self._last >= self.interval_s:
            self._last, self._printed = now, self.done
            have = self.already + self.done
            left = self.total - have
            eta = left / self.rate if self.rate > 0 else float("inf")
            self.printer(f"{have}/{self.total} images ({100.0 * have / self.total:.1f}%) | "
                         f"{self.rate:.2f} images/s | ETA {format_duration(eta)}")


def _spec_chunk(args) -> "object":
    """Specs for indices [start, start + n) as an Arrow table (runs in a Ray task for big N)."""

    start, n, kwargs = args
    return specs_to_table(sample_specs(n, start=start, **kwargs))


def plan_specs(cfg: GenerateConfig, parallel_chunk: int = 20_000):
    """All N specs as an Arrow table in index order; big N is sampled in parallel Ray tasks."""


    kwargs = dict(seed=cfg.seed, guidance=cfg.guidance, styles=cfg.resolved_styles(),
                  attributes=cfg.attributes_file, num_attributes=cfg.num_attributes,
                  camera_sampler=CameraSampler(yaw_range=tuple(cfg.yaw_range), pitch_range=tuple(cfg.pitch_range)))
    chunks = [(s, min(parallel_chunk, cfg.num_samples - s), kwargs) for s in range(0, cfg.num_samples, parallel_chunk)]
    if len(chunks) == 1:
        return _spec_chunk(chunks[0])

    task = ray.remote(num_cpus=1)(_spec_chunk)
    return pa.concat_tables(ray.get([task.remote(c) for c in chunks]))


def _load_or_plan_specs(cfg: GenerateConfig, out, fingerprint: dict):

    remote = isinstance(out, RemoteFolder)
    path = None if remote else out / SPECS_FILE
    if (out.exists(SPECS_FILE) if remote else path.exists()):
        try:
            table = out.read_table(SPECS_FILE) if remote else pq.read_table(path)
            meta = json.loads((table.schema.metadata or {}).get(b"avatar3d_fingerprint", b"null"))
            if meta == fingerprint and table.num_rows == cfg.num_samples:
                return table
        except Exception:  # noqa: BLE001 - a damaged plan is simply re-drawn
            pass
    table = plan_specs(cfg)
    table = table.replace_schema_metadata({b"avatar3d_fingerprint": json.dumps(fingerprint).encode()})
    if remote:
        out.write_table(table, SPECS_FILE)
    else:
        write_atomic_table(table, path)
    return table


def _check_resume_compatible(out, fingerprint: dict, num_samples: int, done_ids: set[str]) -> None:
    if isinstance(out, RemoteFolder):
        job_data, out = out.read_json(JOB_FILE), out.uri
    else:
        job_data = json.loads((out / JOB_FILE).read_text()) if (out / JOB_FILE).exists() else None
    if job_data is not None:
        previous = job_data.get("fingerprint")
        if previous is not None and previous != fingerprint:
            key = next(k for k in sorted(set(previous) | set(fingerprint)) if previous.get(k) != fingerprint.get(k))
            raise ConfigError(
                f"output_dir={str(out)!r} holds rows made with {key}={previous.get(key)!r}, this run has "
                f"{key}={fingerprint.get(key)!r}: pass a new output_dir or the same settings")
    beyond = [i for i in done_ids if not i.isdigit() or int(i) >= num_samples]
    if beyond:
        raise ConfigError(f"output_dir={str(out)!r} already holds rows beyond num_samples={num_samples} "
                          f"(e.g. id {sorted(beyond)[0]}): pass num_samples >= {num_samples + len(beyond)} or a new output_dir")


def _init_ray(cfg: GenerateConfig):

    if ray.is_initialized():
        return ray

    if cfg.ray_address:
        os.environ["RAY_ADDRESS"] = cfg.ray_address
    return init_local_ray()


def build_dataset(cfg: GenerateConfig, specs, shards: dict | None = None):
    """The lazy Ray Data plan: specs -> guidance (tasks) -> ControlNet (actor pool).

    ``shards`` (``shard_writer=workers``: the plan's object reference, the output folder, the run tag and
    the model ids) makes the actors write the shards (:class:`ShardPainter`) and return only their names.
    """

    kinds = cfg.pipeline.controlnet_kinds
    procedural = cfg.pipeline.preset == "procedural"
    names = (["id", "seed", "index", "style", "attributes", "view", "yaw", "pitch", "camera"] if procedural
             else ["id", "seed", "prompt", "negative_prompt", "camera"])
    columns = specs.select(names)
    # Small input blocks: an actor task returns its output block only when the
    # whole block is painted, so the block size sets how late rows reach the
    # driver (progress, shards, work lost on a kill). One batch per block, but
    # at most ~2,000 blocks so a 500k-row plan does not become 60k objects.
    # With shard_writer=workers a block is one shard: its actor paints it whole before writing it.
    per_block = -(-columns.num_rows // 2000)
    block_rows = max(cfg.batch_size, -(-per_block // cfg.batch_size) * cfg.batch_size)
    if shards is not None:
        block_rows = cfg.rows_per_file
    blocks = [columns.slice(i, block_rows) for i in range(0, columns.num_rows, block_rows)]
    ds = ray.data.from_arrow(blocks)
    ds.context.enable_progress_bars = cfg.ray_progress_bars  # this plan's own context, not the process's
    pool = ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors)
    if procedural:  # paints from the camera itself: no guidance images to render
        painter, painter_kwargs = ProceduralPainter, {"options": cfg.procedural, "resolution": cfg.resolution}
        if shards is not None:
            return _paint_shards(ds, cfg, shards, pool, painter, painter_kwargs, num_gpus=None)
        return ds.map_batches(
            painter, fn_constructor_kwargs=painter_kwargs,
            batch_size=cfg.batch_size, batch_format="numpy", compute=pool, num_cpus=cfg.cpus_per_actor,
        )
    ds = ds.map_batches(
        render_guidance_batch, fn_kwargs={"resolution": cfg.resolution, "kinds": kinds},
        batch_size=cfg.guidance_batch_size, batch_format="numpy", num_cpus=cfg.guidance_cpus,
    )
    painter_kwargs = {"pipeline": cfg.pipeline, "resolution": cfg.resolution}
    if shards is not None:
        return _paint_shards(ds, cfg, shards, pool, ControlNetPainter, painter_kwargs,
                             num_gpus=cfg.gpus_per_actor or None)
    ds = ds.map_batches(
        ControlNetPainter, fn_constructor_kwargs=painter_kwargs,
        batch_size=cfg.batch_size, batch_format="numpy",
        compute=pool, num_gpus=cfg.gpus_per_actor or None, num_cpus=cfg.cpus_per_actor,
    )
    return ds


def _paint_shards(ds, cfg: GenerateConfig, shards: dict, pool, painter: type, painter_kwargs: dict, num_gpus):
    """The painting stage with ``shard_writer=workers``: one :class:`ShardPainter` call per shard.

    Writing to an object store, the actors need the driver's ``AWS_*`` variables: a job joining a
    cluster hands them to every worker (:func:`avatar3d.runtime.init_local_ray`), a local Ray started
    by the job inherits them.
    """
    return ds.map_batches(
        ShardPainter, fn_constructor_kwargs={"painter": painter, "painter_kwargs": painter_kwargs,
                                             "resolution": cfg.resolution, "batch_size": cfg.batch_size, **shards},
        batch_size=cfg.rows_per_file, batch_format="numpy", compute=pool, num_gpus=num_gpus,
        num_cpus=cfg.cpus_per_actor,
    )


def _binary_column(values) -> pa.Array | pa.ChunkedArray:
    """PNG bytes as an Arrow binary column: an Arrow column as it is (no copy), else from the Python bytes."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == pa.binary() else values.cast(pa.binary())
    return pa.array(list(values), type=pa.binary())


def _rows_for(specs, generated, model_ids: dict, resolution: int):
    """Join painted ``id`` + PNG with the planned spec rows (spec row i has index i)."""


    ids = [str(i) for i in generated["id"]]
    rows = specs.take(pa.array([int(i) for i in ids], type=pa.int64()))
    n = len(ids)
    extra = {
        "image_png": _binary_column(generated["image_png"]),
        "width": pa.array([resolution] * n, type=pa.int32()),
        "height": pa.array([resolution] * n, type=pa.int32()),
        "base_model": pa.array([model_ids["base_model"]] * n, type=pa.string()),
        "controlnets": pa.array([model_ids["controlnets"]] * n, type=pa.list_(pa.string())),
        "lora": pa.array([model_ids["lora"]] * n, type=pa.string()),
    }
    for name, kind in TRUTH_FIELDS:  # null unless the painter knows the truth
        values = generated.get(name)
        if values is None:
            extra[name] = pa.nulls(n, type=kind)
        elif name == "truth_camera":
            extra[name] = pa.array([np.asarray(v, dtype=np.float64).tolist() for v in values], type=kind)
        else:
            extra[name] = pa.array(list(values), type=kind)
    table = rows.select([f.name for f in ROW_SCHEMA if f.name not in extra])
    for name, column in extra.items():
        table = table.append_column(name, column)
    return table.select([f.name for f in ROW_SCHEMA]).cast(ROW_SCHEMA)


def _driver_batch(block: pa.Table) -> dict:
    """A painted block at the driver: ``image_png`` as its Arrow column (no copy), the rest as numpy."""
    from ray.data.block import BlockAccessor

    batch = BlockAccessor.for_block(block.drop_columns(["image_png"])).to_batch_format("numpy")
    batch["image_png"] = block.column("image_png")
    return batch


def _tally(batch: dict, rows: int, stage: dict, on_batch: Callable[[dict], None] | None) -> None:
    """Add a block's per-stage worker seconds to ``stage`` and report the block to ``on_batch``."""
    spent = {key: float(np.sum(batch[key])) for key in stage}
    for key, seconds in spent.items():
        stage[key] += seconds
    if on_batch is not None:
        on_batch({"rows": rows, "arrival": time.time(), "call_start": batch["call_start"],
                  "call_end": batch["call_end"], **spent})


def _batch_nbytes(batch: dict) -> int:
    """Bytes of a block as it reached the driver (bytes/str objects by length, arrays by size)."""
    total = 0
    for values in batch.values():
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            total += values.nbytes
            continue
        values = np.asarray(values)
        if values.dtype == object:
            total += sum(len(v) if isinstance(v, (bytes, str)) else np.asarray(v).nbytes for v in values)
        else:
            total += values.nbytes
    return total


def run_generation(cfg: GenerateConfig, on_shard: Callable[[Path, int], None] | None = None,
                   on_batch: Callable[[dict], None] | None = None) -> GenerationResult:
    """Generate (or finish) the dataset described by ``cfg``. Validates everything before any work.

    ``on_shard(path, rows_so_far)`` is called after each shard is in place
    (tests use it to simulate a crash; jobs can use it for notifications).
    ``on_batch(info)`` is called for every block arriving at the driver with
    its row count, arrival time, the wall-clock span of the painter call that
    made each row and the seconds its rows spent in each stage inside the
    workers (the benchmark uses it to measure Ray's idle gaps).
    """
    t0 = time.perf_counter()
    cfg.validate()
    Tracker(cfg.tracking, cfg.output_dir, "", stage="datagen").check()  # an unreachable store fails now, not at the end

    try:
        check_models_available(cfg.pipeline)
    except Exception as err:  # one line, before any work
        raise ConfigError(str(err)) from None
    fingerprint = cfg.content_fingerprint()
    if is_remote(cfg.output_dir):  # an object store: one PUT per file, a manifest, no lock (docs/cluster.md)
        folder = RemoteFolder(cfg.output_dir)
        resume = scan_remote_for_resume(folder, clean=False)
        _check_resume_compatible(folder, fingerprint, cfg.num_samples, resume.done_ids)
        log.info(f"output_dir={folder.uri} is on an object store, where no lock keeps a second job out: "
                 "give each job its own prefix")
        return _generate_locked(cfg, folder, fingerprint, t0, on_shard, on_batch)
    out = Path(cfg.output_dir).expanduser()
    resume = scan_for_resume(out, clean=False)
    _check_resume_compatible(out, fingerprint, cfg.num_samples, resume.done_ids)

    # ---- all checks passed: from here on we do work, as this folder's one writer
    with folder_lock(out, "output_dir"):
        return _generate_locked(cfg, out, fingerprint, t0, on_shard, on_batch)


def _generate_locked(cfg: GenerateConfig, out: Path | RemoteFolder, fingerprint: dict, t0: float,
                     on_shard: Callable[[Path, int], None] | None,
                     on_batch: Callable[[dict], None] | None) -> GenerationResult:
    remote = isinstance(out, RemoteFolder)
    if remote:
        resume = scan_remote_for_resume(out, clean=True)
        for where, reason in resume.quarantined:
            log.warning(f"moved a shard resume cannot use ({reason}) to {where}; its rows are painted again")
        if resume.duplicate_ids:
            log.warning(f"{resume.duplicate_ids} ids appear twice in {out.uri} (two jobs wrote one prefix?); "
                        "the card counts them")
        if not out.exists(MANIFEST_FILE):  # from now on readers count only what a manifest names
            out.write_manifest()
        out.write_json({"fingerprint": fingerprint, "config": to_dict(cfg)}, JOB_FILE)
    else:
        out.mkdir(parents=True, exist_ok=True)
        resume = scan_for_resume(out, clean=True)
        for path in resume.removed_tmp:
            log.info(f"removed the unfinished temporary {path.name}")
        for path, reason in resume.quarantined:
            log.warning(f"moved {path.name}, which resume cannot read ({reason}), to {path.parent}; its rows are "
                        "painted again")
        if resume.duplicate_ids:
            dropped = drop_duplicate_rows(out)
            log.warning(f"removed {dropped} duplicate rows (ids written twice, as two jobs writing one folder at "
                        "once did before the folder lock); each id now appears once")
        write_atomic_json({"fingerprint": fingerprint, "config": to_dict(cfg)}, out / JOB_FILE)
    _init_ray(cfg)
    t_specs = time.perf_counter()
    specs = _load_or_plan_specs(cfg, out, fingerprint)
    t_specs = time.perf_counter() - t_specs
    done = resume.done_ids
    todo_mask = [i not in done for i in specs.column("id").to_pylist()]
    todo = specs.filter(todo_mask)
    model_ids = cfg.pipeline.model_ids()
    log.info(f"{cfg.num_samples} samples over {len(cfg.resolved_styles())} styles, guidance={cfg.guidance}, "
             f"{cfg.resolution}px; {len(done)} already in {out.uri if remote else out}, {todo.num_rows} to generate")
    if cfg.gpus_per_actor > 0:

        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < cfg.gpus_per_actor * cfg.min_actors:
            log.warning(f"the cluster shows {gpus:g} GPUs, the pool needs {cfg.gpus_per_actor * cfg.min_actors:g} "
                     "to start; waiting for the autoscaler")

    stage = {"guidance_s": 0.0, "diffusion_s": 0.0, "png_s": 0.0}
    writer = ShardWriter(out, cfg.rows_per_file, run_tag=time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6])
    progress = Progress(cfg.num_samples, len(done), cfg.progress_interval_s)
    t_gen = time.perf_counter()
    cpu_gen = time.process_time()  # the driver's CPU (all its threads: Ray Data's executor too) for the rows
    driver_bytes = 0
    worker_write_s = 0.0  # seconds the workers spent writing their shards (shard_writer=workers)
    if todo.num_rows and cfg.shard_writer == "workers":
        # The actors write the shards; the driver only commits each one they report (a rename or a
        # manifest entry) and never touches a PNG.
        shards = {"plan": [ray.put(specs)], "output_dir": out.uri if remote else str(out.resolve()),
                  "run_tag": writer.run_tag, "model_ids": model_ids}
        ds = build_dataset(cfg, todo, shards)
        for block in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            driver_bytes += _batch_nbytes(block)
            _tally(block, int(np.sum(block["rows"])), stage, on_batch)
            worker_write_s += float(np.sum(block["write_s"]))
            for name, rows, error in zip(block["shard"], block["rows"], block["error"]):
                if error:
                    raise OSError(f"output_dir={cfg.output_dir}: a worker could not write shard {name}: {error}")
                if writer.commit(str(name), int(rows), on_written=on_shard) is not None:
                    progress.update(int(rows))
        progress.update(0, force=True)
    elif todo.num_rows:
        ds = build_dataset(cfg, todo)
        # prefetch_batches=0: with prefetching, Ray Data hands a block to the
        # driver only once the next one is ready (measured: one block late).
        # Blocks come as Arrow: the PNG column stays the object store's buffer
        # until the shard is written (as numpy every PNG became a Python bytes
        # copy, about half the driver's CPU per row: evaluation/datagen/README.md).
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            batch = _driver_batch(block)
            driver_bytes += _batch_nbytes(batch)
            _tally(batch, len(batch["id"]), stage, on_batch)
            writer.add(_rows_for(specs, batch, model_ids, cfg.resolution), on_written=on_shard)
            progress.update(len(batch["id"]))
        writer.flush(on_written=on_shard)
        progress.update(0, force=True)
    t_gen = time.perf_counter() - t_gen
    cpu_gen = time.process_time() - cpu_gen

    generated = writer.rows_written
    timings = {
        "specs_s": round(t_specs, 3),
        "generation_wall_s": round(t_gen, 3),
        "images_per_s": round(generated / t_gen, 4) if generated and t_gen > 0 else 0.0,
        "per_image_s": {k.removesuffix("_s"): round(v / generated, 5) for k, v in stage.items()} if generated else {},
        # The driver's share: its CPU seconds and the bytes it received per generated row (1 / driver_cpu_s_per_row
        # is the most rows/s one driver can take, however many GPUs paint).
        "driver_cpu_s": round(cpu_gen, 3),
        "driver_cpu_s_per_row": round(cpu_gen / generated, 7) if generated else None,
        "driver_bytes_per_row": round(driver_bytes / generated, 1) if generated else None,
        "shard_writer": cfg.shard_writer,
        **({"write_s": round(worker_write_s, 3)} if cfg.shard_writer == "workers" else {}),
        "total_wall_s": None,
    }
    card = build_card(out, to_dict(cfg), model_ids, timings, cfg.num_samples)
    timings["total_wall_s"] = round(time.perf_counter() - t0, 3)
    card["timings"] = timings
    if remote:  # the card is written last: one PUT
        card["history"] = _card_history_of(out.read_json(CARD_FILE) if out.exists(CARD_FILE) else None)
        card_path = out.write_json(card, CARD_FILE)
    else:
        card["history"] = _card_history(out / CARD_FILE)
        card_path = write_atomic_json(card, out / CARD_FILE)
    if card["num_rows"] != card["num_unique_ids"]:
        log.warning(f"{card['num_rows'] - card['num_unique_ids']} duplicate ids in {out.uri if remote else out}")
    run_id = log_to_mlflow(cfg, card, card_path, generated)
    result = GenerationResult(
        output_dir=out.uri if remote else str(out), num_samples=cfg.num_samples, num_rows=card["num_rows"], generated=generated,
        skipped=len(done), shards_written=len(writer.written), wall_s=timings["total_wall_s"],
        images_per_s=timings["images_per_s"], card_path=str(card_path), mlflow_run_id=run_id, timings=timings,
    )
    return result  # its summary is the caller's to show (the CLI prints it, the chain logs it), once


def _card_history(path: Path) -> list[dict]:
    """The earlier runs of this folder (when, how many rows, their timings), kept when the card is rewritten."""
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return _card_history_of(old)


def _card_history_of(old: dict | None) -> list[dict]:
    if not isinstance(old, dict):
        return []
    earlier = {k: old.get(k) for k in ("created_at", "num_rows", "timings")}
    return [*old.get("history", []), earlier]


def log_to_mlflow(cfg: GenerateConfig, card: dict, card_path: Path, generated: int) -> str | None:
    """The job's only MLflow contact: resolved config, counts, throughput, the card."""
    t = card["timings"]
    metrics = {
        "num_rows": card["num_rows"], "num_unique_ids": card["num_unique_ids"], "generated_this_run": generated,
        "images_per_s": t["images_per_s"], "generation_wall_s": t["generation_wall_s"], "specs_s": t["specs_s"],
        "total_wall_s": t["total_wall_s"], "num_styles": len(card["counts"]["style"]),
        **{f"per_image_{k}_s": v for k, v in t["per_image_s"].items()},
    }
    with Tracker(cfg.tracking, cfg.output_dir, f"generate-{Path(cfg.output_dir).name}", stage="datagen") as tracker:
        tracker.log_config(to_dict(cfg))
        tracker.log_metrics(metrics)
        if is_remote(card_path):  # MLflow logs local files: a local copy of the card, stored where MLflow says
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / CARD_FILE
                local.write_text(json.dumps(card, indent=2, ensure_ascii=False))
                tracker.log_file(local)
        else:
            tracker.log_file(card_path)
        return tracker.run_id
