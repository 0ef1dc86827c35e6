"""``avatar3d train-prior``: the driver side of training the W-space prior on Ray Train.

1. validate the options, the pairs folder and what it was built from
   (generator snapshot, image encoder) before any worker starts,
2. compute the w statistics the prior normalises with,
3. open (or re-open) the MLflow run of this run name and log the config,
4. read the pairs with Ray Data and start a ``TorchTrainer`` (DeepSpeed or
   plain engines inside, :mod:`avatar3d.prior.ray_worker`),
5. assemble the prior folder (denoiser + schedule + encoder + generator,
   :class:`avatar3d.prior.pipeline.ImageToAvatarPipeline`), log it and register it.

Running the same ``run_name`` again resumes it from its latest checkpoint.
``output_dir`` may be an object store (``s3://...``): Ray Train's checkpoints,
``config.yaml`` and the prior folder are then objects under it (one PUT per
file, no lock: one job per run name), and MLflow keeps its artifacts where its
tracking store says.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from diffusers import PriorTransformer

from avatar3d.config import ConfigError, to_dict, writable_dir
from avatar3d.datagen.dataset import check_output_location, is_remote
from avatar3d.datagen.shards import RemoteFolder, upload, write_atomic_json
from avatar3d.gan.snapshot import load_snapshot, read_snapshot_metadata
from avatar3d.prior.config import TrainPriorConfig
from avatar3d.prior.encoder import TINY, load_image_encoder
from avatar3d.prior.loop import ENGINE_TAG, STATE_TREE, WEIGHTS_DIR
from avatar3d.prior.model import train_scheduler
from avatar3d.prior.pairs import check_pairs, w_statistics
from avatar3d.prior.pipeline import PRIOR_JSON, ImageToAvatarPipeline
from avatar3d.prior.ray_worker import train_func
from avatar3d.prior.registry import register_prior
from avatar3d.runtime import apply_local_defaults
from avatar3d.atomic import atomic_folder
from avatar3d.tracking.tracker import Tracker
from avatar3d.training.ray_fit import (WorkerContext, check_checkpoint_to_load, fit_with_ray, run_folder,
                                       torch_threads_from_env, worker_config)

log = logging.getLogger(__name__)

PRIOR_DIR = "prior"
PAIRS_RECORD = "pairs.json"  # in the run folder: the card of the pairs the run started on
# What a pairs row means (its generator, its encoder, its seeds): a run resumes only on pairs that agree on these
# with the ones it started on (more rows of the same seed are the same rows, and may be added).
PAIRS_MEANING = ("snapshot", "image_encoder", "encoder_seed", "seed", "truncation_psi")


@dataclass
class PriorTrainResult:
    run_dir: Path | str  # a URI when output_dir is on an object store
    prior_dir: Path | str | None
    steps: int
    metrics: dict
    mlflow_run_id: str | None
    registered_version: str | None

    def summary(self) -> str:
        lines = [f"trained the prior for {self.steps} steps; run folder {self.run_dir}"]
        if self.prior_dir:
            lines.append(f"prior: {self.prior_dir}")
        if self.registered_version:
            lines.append(f"registered: models:/{self.registered_version}")
        return "\n".join(lines)


def run_train_prior(cfg: TrainPriorConfig) -> PriorTrainResult:
    apply_local_defaults()
    # Validate everything the workers and the final assembly will need, here.
    remote = check_output_location(cfg.output_dir, cfg.tracking)  # Ray storage, config, prior folder go there
    info = check_pairs(cfg.pairs)
    snapshot = info.card.get("snapshot", "")
    read_snapshot_metadata(snapshot)
    encoder = load_image_encoder(info.card.get("image_encoder", "tiny"), seed=int(info.card.get("encoder_seed", 0)))
    if encoder.dim != info.embed_dim:
        raise ConfigError(f"pairs: embeddings are {info.embed_dim}-d but the encoder {encoder.name!r} gives "
                          f"{encoder.dim}-d; rebuild the pairs")
    if cfg.resume and not (Path(cfg.resume) / STATE_TREE).is_dir():
        raise ConfigError(f"resume: {cfg.resume} is not a train-prior checkpoint folder (no {STATE_TREE}/ inside)")
    per_worker = cfg.batch_size // cfg.scaling.num_workers
    rows_per_worker = info.num_rows // cfg.scaling.num_workers
    if rows_per_worker < per_worker:
        raise ConfigError(f"batch_size: each of {cfg.scaling.num_workers} worker(s) would get {rows_per_worker} "
                          f"pairs, fewer than its batch of {per_worker}; lower batch_size or build more pairs")
    if cfg.lr == 0:
        log.warning("lr=0: the prior will not change (a control run)")
    output_dir = cfg.output_dir.rstrip("/") if remote else Path(cfg.output_dir).resolve()
    run_dir = f"{output_dir}/{cfg.run_name}" if remote else output_dir / cfg.run_name
    resuming = check_checkpoint_to_load(output_dir, cfg.run_name, cfg.resume, cfg.scaling, (ENGINE_TAG,),
                                        restart="start a new run without resume") is not None
    record = pairs_record(info.card)
    recorded = check_same_pairs(run_dir, record, cfg) if resuming else False
    tracker = Tracker(cfg.tracking, output_dir, cfg.run_name, stage="prior", resume=True).check()
    if not remote:
        writable_dir(cfg.output_dir, "output_dir")  # the raw value: an empty one is refused, not resolved to .
    log.info(f"pairs: {info.summary()}")
    w_mean, w_std = w_statistics(cfg.pairs)

    # One writer per run folder (an object store has no lock: one job per run name); one MLflow run.
    with run_folder(run_dir, remote, cfg) as local_tmp, tracker:
        tracker.log_config({"train": to_dict(cfg),
                            "pairs": {k: v for k, v in info.card.items() if k != "gan_config"}})
        if not recorded:  # a new run, or one from before the record (checked on its prior folder above)
            _record_pairs(run_dir, remote, record)
        t0 = time.time()
        # The workers get the typed config itself plus what the driver derived from the pairs.
        context = WorkerContext(rows_per_worker=rows_per_worker, tracking_uri=tracker.uri or "",
                                run_id=tracker.run_id or "", torch_threads=torch_threads_from_env())
        train_config = worker_config(cfg, context, pairs={"w_dim": info.w_dim, "embed_dim": info.embed_dim,
                                                          "w_mean": w_mean.tolist(), "w_std": w_std.tolist()})
        # Pairs are small beside the many epochs they are seen for: read once into the object store if they fit.
        result = fit_with_ray(train_func, train_config, cfg.scaling, cfg.run_name, output_dir, cfg.max_failures,
                              info.files, columns=["w", "embedding"], filesystem=info.filesystem,
                              nbytes=pairs_bytes(info))
        tracker.log_metrics({"train_wall_s": time.time() - t0})
        # On an object store the prior folder is assembled in a local temporary (for MLflow) and uploaded.
        prior_dir = _assemble_prior(result, cfg, encoder, snapshot, info.card,
                                    local_tmp / PRIOR_DIR if remote else run_dir / PRIOR_DIR)
        version = None
        if prior_dir is not None:
            tracker.log_folder(prior_dir, artifact_path="prior_folder")
            version = tracker.register(register_prior, prior_dir, default="avatar3d-prior")
            if remote:
                prior_dir = upload(prior_dir, f"{run_dir}/{PRIOR_DIR}")
        metrics = dict(result.metrics or {})
        return PriorTrainResult(run_dir=run_dir, prior_dir=prior_dir, steps=int(metrics.get("step", 0)),
                                metrics=metrics, mlflow_run_id=tracker.run_id, registered_version=version)


def pairs_bytes(info) -> int:
    """The pairs' float32 w and embedding columns in memory."""
    return info.num_rows * (info.w_dim + info.embed_dim) * 4


def pairs_record(card: dict) -> dict:
    """What a run records about the pairs it starts on: their card (less the GAN config) and, for a local
    generator snapshot, a hash of its bytes (a retrained generator can be written to the same path)."""
    record = {k: v for k, v in card.items() if k != "gan_config"}
    snapshot = card.get("snapshot", "")
    if snapshot and not is_remote(snapshot) and Path(snapshot).is_file():
        record["snapshot_sha256"] = hashlib.sha256(Path(snapshot).read_bytes()).hexdigest()
    return record


def check_same_pairs(run_dir: Path | str, record: dict, cfg: TrainPriorConfig) -> bool:
    """Refuse to resume a run on pairs whose rows mean something else than the ones it started on (another
    generator, encoder or seed): the prior would go on learning a new embedding space from the old one's
    weights, silently. A run from before the record existed is checked on what its prior folder names.
    -> whether the run had a record."""
    folder = RemoteFolder(str(run_dir))  # a local folder or an object-store prefix alike
    first = folder.read_json(PAIRS_RECORD)
    had_record = first is not None
    if first is None:
        meta = folder.read_json(f"{PRIOR_DIR}/{PRIOR_JSON}") or {}
        first = {k: v for k, v in (("image_encoder", meta.get("image_encoder")),
                                   ("snapshot", meta.get("trained", {}).get("generator_snapshot"))) if v is not None}
    keys = [*PAIRS_MEANING, "snapshot_sha256"]
    if record.get("image_encoder") != TINY:
        keys.remove("encoder_seed")  # only the tiny random encoder is made from its seed
    changed = [k for k in keys if k in first and k in record and first[k] != record[k]]
    if changed:
        k = changed[0]
        what = "the generator snapshot's bytes" if k == "snapshot_sha256" else f"{k} {first[k]!r}, these have {record[k]!r}"
        raise ConfigError(f"pairs: run_name={cfg.run_name} resumes a prior trained on other pairs ({what}); pass "
                          "another run_name to train afresh on these pairs, or the pairs the run started on")
    return had_record


def _record_pairs(run_dir: Path | str, remote: bool, record: dict) -> None:
    if remote:
        RemoteFolder(str(run_dir)).write_json(record, PAIRS_RECORD)
    else:
        write_atomic_json(record, Path(run_dir) / PAIRS_RECORD)


def _assemble_prior(result, cfg: TrainPriorConfig, encoder, snapshot: str, card: dict, folder: Path) -> Path | None:
    """The final checkpoint's denoiser + schedule + encoder + generator -> one prior folder (atomically)."""
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as ckpt:
        if not (Path(ckpt) / WEIGHTS_DIR).is_dir():
            return None
        prior = PriorTransformer.from_pretrained(Path(ckpt) / WEIGHTS_DIR)
    pipe = ImageToAvatarPipeline(encoder, prior, train_scheduler(cfg.model.prediction_type,
                                                                 cfg.model.num_train_timesteps),
                                 load_snapshot(snapshot).generator, defaults=to_dict(cfg.sampling))
    with atomic_folder(folder) as tmp:
        pipe.save_pretrained(tmp, snapshot, extra={
            "trained": {"run_name": cfg.run_name, "steps": int((result.metrics or {}).get("step", 0)),
                        "pairs": cfg.pairs if is_remote(cfg.pairs) else str(Path(cfg.pairs).resolve()), "num_pairs": card.get("num_pairs"),
                        "generator_snapshot": snapshot, "model": to_dict(cfg.model)}})
    return folder
