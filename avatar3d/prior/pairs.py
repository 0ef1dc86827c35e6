"""Training pairs for the prior: z -> w -> front render -> CLIP embedding, on Ray Data.

    ray.data.range(N) --map_batches(PairBuilder, actor pool)--> Parquet

Each actor loads the generator snapshot and the image encoder once. Row i
depends only on (seed, i): its z, its w, and the ray jitter of its render
are all drawn from the row's own seed, so the pairs are the same for any
batch size, actor count or block layout.

Layout of a pairs folder::

    <output_dir>/
      shards/*.parquet   index, seed, w list<float32>, embedding list<float32>, image_png
      pairs.json         the card: snapshot, encoder, dims, counts, config

The shards are written into a temporary folder and renamed into place, so a
crashed job leaves no half-written pairs folder that looks complete. On an
object store (``output_dir=s3://...``), which has no rename, a run first
deletes the prefix's card and shards, each shard is one complete PUT, and the
card is written last: a folder without its card reads as unfinished.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from avatar3d.atomic import atomic_folder, atomic_write
from avatar3d.config import ConfigError, to_dict, writable_dir
from avatar3d.datagen.dataset import check_output_location, encode_png, is_remote, resolve_filesystem
from avatar3d.datagen.shards import put_object, table_bytes
from avatar3d.gan.snapshot import load_snapshot, read_snapshot_metadata
from avatar3d.lock import folder_lock
from avatar3d.prior.config import BuildPairsConfig
from avatar3d.prior.encoder import load_image_encoder
from avatar3d.prior.views import map_front, render_w, seeded_z
from avatar3d.runtime import apply_local_defaults, default_device, init_local_ray, set_torch_threads
from avatar3d.safeio import check_format
from avatar3d.tracking.options import TrackingOptions

SHARDS = "shards"
CARD = "pairs.json"
PAIRS_FORMAT = "avatar3d.prior-pairs/1"


def pairs_schema() -> pa.Schema:
    return pa.schema([("index", pa.int64()), ("seed", pa.int64()), ("w", pa.list_(pa.float32())),
                      ("embedding", pa.list_(pa.float32())), ("image_png", pa.binary())])


def row_seed(seed: int, index: int) -> int:
    """A 31-bit seed for row ``index`` of a job seeded ``seed`` (independent streams per row)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


class PairBuilder:
    """Ray Data actor (or plain callable): row indices -> (w, embedding, front PNG) rows.

    ``actor``: it runs in a Ray actor, a process of its own, whose torch threads follow the CPUs Ray gave it
    (``OMP_NUM_THREADS``) and whose transformers loads print no bars; in the caller's process it changes neither.
    """

    def __init__(self, snapshot: str, image_encoder: str, encoder_seed: int, truncation_psi: float, seed: int,
                 actor: bool = False):
        if actor:
            from transformers.utils import logging as hf_logging  # local: see encoder.tiny_encoder

            hf_logging.disable_progress_bar()
            set_torch_threads()
        device = default_device()
        self.G = load_snapshot(snapshot, device).generator
        self.encoder = load_image_encoder(image_encoder, seed=encoder_seed, device=device)
        self.truncation_psi, self.seed = truncation_psi, seed

    def __call__(self, batch: dict) -> pa.Table:
        index = np.asarray(batch["id"], dtype=np.int64)
        seeds = [row_seed(self.seed, i) for i in index]
        mapped = map_front(self.G, seeded_z(self.G, seeds), self.truncation_psi)
        images = render_w(self.G, mapped.w, yaws=[0.0], seeds=seeds)[:, 0]
        emb = self.encoder.embed(images).numpy()
        return pairs_table(index, seeds, mapped.w.float().cpu().numpy(), emb, [encode_png(im) for im in images])


def pairs_table(index, seeds, w: np.ndarray, emb: np.ndarray, pngs: list[bytes]) -> pa.Table:
    def lists(x: np.ndarray) -> pa.Array:
        x = np.ascontiguousarray(x, dtype=np.float32)
        offsets = np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.reshape(-1)))

    return pa.table([pa.array(np.asarray(index, np.int64)), pa.array(np.asarray(seeds, np.int64)), lists(w),
                     lists(emb), pa.array(pngs, pa.binary())], schema=pairs_schema())


# -- the job -------------------------------------------------------------------------------

@dataclass
class PairsResult:
    folder: Path
    num_pairs: int
    w_dim: int
    embed_dim: int
    seconds: float

    def summary(self) -> str:
        return (f"wrote {self.num_pairs} pairs (w {self.w_dim}-d, embedding {self.embed_dim}-d) to {self.folder} "
                f"in {self.seconds:.1f} s")


def run_build_pairs(cfg: BuildPairsConfig, use_ray: bool = True) -> PairsResult:
    """Build the pairs folder (Ray Data actor pool; ``use_ray=False``: the same builder in this process)."""
    apply_local_defaults()
    if check_output_location(cfg.output_dir, TrackingOptions(enabled=False)):  # the pairs job logs no MLflow run
        return _build_remote(cfg, use_ray)
    writable_dir(cfg.output_dir, "output_dir", create=False)  # an empty one is refused, not taken as "."
    meta = _check_inputs(cfg)
    out = Path(cfg.output_dir).resolve()
    if (out / CARD).exists() and not cfg.overwrite:
        raise ConfigError(f"output_dir: {out} already holds pairs; pass overwrite=true or a new output_dir")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "output_dir"):  # one writer per pairs folder
        t0 = time.time()
        with atomic_folder(out / SHARDS) as tmp:  # a failed run leaves the previous pairs as they were
            _write_shards(cfg, str(tmp), None, use_ray)
            (out / CARD).unlink(missing_ok=True)  # from here until the new card, the folder reads as unfinished
        info = check_pairs(out, need_card=False)
        card = _card(cfg, meta, info, t0)
        atomic_write(out / CARD, json.dumps(card, indent=2))
        return PairsResult(folder=out, num_pairs=info.num_rows, w_dim=info.w_dim, embed_dim=info.embed_dim,
                           seconds=time.time() - t0)


def _check_inputs(cfg: BuildPairsConfig) -> dict:
    meta = read_snapshot_metadata(cfg.snapshot)  # fail here, not in an actor
    if cfg.image_encoder != "tiny":
        load_image_encoder(cfg.image_encoder)  # one clear line when the model is not there
    return meta


def _build_remote(cfg: BuildPairsConfig, use_ray: bool) -> PairsResult:
    """Pairs on an object store: no rename and no lock, so the card is the mark of a finished folder. The old
    card and shards go first (a crash then leaves a folder without a card, which readers refuse), each shard
    is one PUT, and the new card is written last. Give each job its own prefix."""
    uri = cfg.output_dir.rstrip("/")
    meta = _check_inputs(cfg)
    fs, root = resolve_filesystem(uri)
    has_card = fs.get_file_info(f"{root}/{CARD}").type == pafs.FileType.File
    if has_card and not cfg.overwrite:
        raise ConfigError(f"output_dir: {uri} already holds pairs; pass overwrite=true or a new output_dir")
    t0 = time.time()
    if has_card:
        fs.delete_file(f"{root}/{CARD}")
    if fs.get_file_info(f"{root}/{SHARDS}").type == pafs.FileType.Directory:
        fs.delete_dir_contents(f"{root}/{SHARDS}", missing_dir_ok=True)
    _write_shards(cfg, f"{uri}/{SHARDS}", fs, use_ray)
    info = check_pairs(uri, need_card=False)
    put_object(fs, f"{root}/{CARD}", json.dumps(_card(cfg, meta, info, t0), indent=2).encode())
    return PairsResult(folder=uri, num_pairs=info.num_rows, w_dim=info.w_dim, embed_dim=info.embed_dim,
                       seconds=time.time() - t0)


def _write_shards(cfg: BuildPairsConfig, folder: str, fs: pafs.FileSystem | None, use_ray: bool) -> None:
    """The pairs as Parquet files in ``folder`` (a local folder, or a URI on ``fs``: one PUT per file)."""
    if use_ray:
        _write_with_ray(cfg, folder, fs)
        return
    builder = PairBuilder(cfg.snapshot, cfg.image_encoder, cfg.encoder_seed, cfg.truncation_psi, cfg.seed)
    table = pa.concat_tables([builder({"id": np.arange(i, min(i + cfg.batch_size, cfg.num_pairs))})
                              for i in range(0, cfg.num_pairs, cfg.batch_size)])
    if fs is None:
        pq.write_table(table, Path(folder) / "part-00000.parquet")
    else:
        put_object(fs, f"{resolve_filesystem(folder)[1]}/part-00000.parquet", table_bytes(table))


def _card(cfg: BuildPairsConfig, meta: dict, info: "PairsInfo", t0: float) -> dict:
    if info.num_rows != cfg.num_pairs:
        raise RuntimeError(f"pairs job wrote {info.num_rows} rows, expected {cfg.num_pairs}")
    return {"format": PAIRS_FORMAT, "snapshot": str(Path(cfg.snapshot).resolve()),
            "gan_config": meta["gan_config"], "image_encoder": cfg.image_encoder,
            "encoder_seed": cfg.encoder_seed, "num_pairs": info.num_rows, "w_dim": info.w_dim,
            "embed_dim": info.embed_dim, "truncation_psi": cfg.truncation_psi, "seed": cfg.seed,
            "config": to_dict(cfg), "seconds": round(time.time() - t0, 3)}


def _write_with_ray(cfg: BuildPairsConfig, folder: str, fs: pafs.FileSystem | None) -> None:
    import ray  # Ray only for the Ray Data driver (the prior package's rule): use_ray=False runs without it

    init_local_ray()
    # About one batch per block: an actor returns a block only when it is done with it.
    blocks = max(1, -(-cfg.num_pairs // cfg.batch_size))
    ds = ray.data.range(cfg.num_pairs, override_num_blocks=blocks)
    ds.context.enable_progress_bars = False  # this dataset's context (the steps after share it), not the process's
    ds = ds.map_batches(
        PairBuilder,
        fn_constructor_kwargs={"snapshot": str(Path(cfg.snapshot).resolve()), "image_encoder": cfg.image_encoder,
                               "encoder_seed": cfg.encoder_seed, "truncation_psi": cfg.truncation_psi,
                               "seed": cfg.seed, "actor": True},
        batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
    )
    ds.write_parquet(str(folder), filesystem=fs, min_rows_per_file=min(cfg.rows_per_file, cfg.num_pairs))


# -- reading -------------------------------------------------------------------------------

@dataclass
class PairsInfo:
    folder: str | Path
    files: list[str]
    num_rows: int
    w_dim: int
    embed_dim: int
    card: dict
    filesystem: pafs.FileSystem | None = None  # set for an object store (files are paths inside it)

    def summary(self) -> str:
        return f"{self.num_rows} pairs (w {self.w_dim}-d, embedding {self.embed_dim}-d) in {len(self.files)} file(s)"


@dataclass
class Pairs:
    """Pairs in row-index order, as arrays."""

    index: np.ndarray      # (N,) int64
    seed: np.ndarray       # (N,) int64
    w: np.ndarray          # (N, w_dim) float32
    embedding: np.ndarray  # (N, D) float32
    image_png: list[bytes] | None


def check_pairs(folder: str | Path, need_card: bool = True) -> PairsInfo:
    """Validate a pairs folder, local or on an object store (files, schema, dims) without reading the images."""
    remote = is_remote(folder)
    fs, root = resolve_filesystem(folder)
    where = str(folder).rstrip("/") if remote else root
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{SHARDS}", allow_not_found=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"pairs: no Parquet files under {where}/{SHARDS}; pass a folder written by "
                                "avatar3d build-prior-pairs")
    card = {}
    if need_card:
        if fs.get_file_info(f"{root}/{CARD}").type != pafs.FileType.File:
            raise FileNotFoundError(f"pairs: {where}/{CARD} is missing (an unfinished build-prior-pairs job?); "
                                    "run build-prior-pairs again")
        with fs.open_input_stream(f"{root}/{CARD}") as fh:
            card = json.loads(fh.read())
        check_format(f"{where}/{CARD}", card.get("format"), PAIRS_FORMAT,
                     "run build-prior-pairs again with this avatar3d", field="pairs")
    rows, dims = 0, None
    for f in files:
        pf = pq.ParquetFile(fs.open_input_file(f))
        missing = {"w", "embedding"} - set(pf.schema_arrow.names)
        if missing:
            raise ValueError(f"pairs: {f} lacks column(s) {sorted(missing)}; it is not a prior pairs shard")
        rows += pf.metadata.num_rows
        if dims is None and pf.metadata.num_rows:
            first = pf.read_row_group(0, columns=["w", "embedding"]).slice(0, 1).to_pylist()[0]
            dims = (len(first["w"]), len(first["embedding"]))
    if not rows or dims is None:
        raise ValueError(f"pairs: {where} holds no rows; run build-prior-pairs with num_pairs >= 1")
    return PairsInfo(folder=where if remote else Path(root), files=files, num_rows=rows, w_dim=dims[0],
                     embed_dim=dims[1], card=card, filesystem=fs if remote else None)


def read_pairs(folder: str | Path, with_images: bool = False) -> Pairs:
    info = check_pairs(folder, need_card=False)
    columns = ["index", "seed", "w", "embedding"] + (["image_png"] if with_images else [])
    table = pa.concat_tables([pq.read_table(f, columns=columns, filesystem=info.filesystem) for f in info.files])
    table = table.sort_by("index")

    def matrix(name: str, dim: int) -> np.ndarray:
        col = table.column(name).combine_chunks()
        return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)

    return Pairs(index=table.column("index").to_numpy(), seed=table.column("seed").to_numpy(),
                 w=matrix("w", info.w_dim), embedding=matrix("embedding", info.embed_dim),
                 image_png=table.column("image_png").to_pylist() if with_images else None)


def w_statistics(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of w over all pairs (std floored: a dead dimension must not divide by 0)."""
    w = read_pairs(folder).w.astype(np.float64)
    return w.mean(0).astype(np.float32), np.maximum(w.std(0), 1e-6).astype(np.float32)
