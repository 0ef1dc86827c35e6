"""The evaluation stage as library calls with typed options: FID, latent walk, turntable, mesh.

``run_evaluate(EvaluateConfig)`` is what the chain runs; the ``fid``, ``walk``,
``turntable`` and ``export-mesh`` subcommands call the single-part functions
below with the same option classes, whose defaults are the only defaults::

    cfg = load_config(EvaluateConfig, "jobs/configs/evaluate_tiny.yaml", ["model=snap.safetensors", "data=ds"])
    result = run_evaluate(cfg)        # <output_dir>/fid.json, walk/, turntable/, mesh/avatar.glb
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from avatar3d.config import dump_config, writable_dir
from avatar3d.datagen.dataset import TRAIN_COLUMNS, open_dataset
from avatar3d.evaluation.features import get_extractor
from avatar3d.evaluation.fid import FIDResult, evaluate_fid
from avatar3d.evaluation.mesh import export_mesh, generator_mesh, preview_image, seed_latent
from avatar3d.evaluation.models import load_generator
from avatar3d.evaluation.options import (  # noqa: F401  (re-exported: the stage's config)
    PARTS, EvaluateConfig, FIDOptions, MeshOptions, TruthOptions, TurntableOptions, WalkOptions,
)
from avatar3d.evaluation.truth import TruthMetrics, TruthWorld, has_truth
from avatar3d.runtime import cache_dir as default_cache
from avatar3d.atomic import atomic_path, atomic_write
from avatar3d.evaluation.walk import latent_walk, save_outputs, turntable

@dataclass
class EvaluateResult:
    output_dir: Path
    fid: FIDResult | None
    files: dict[str, list[Path]]
    notes: list[str]
    truth: TruthMetrics | None = None

    def summary(self) -> str:
        lines = [self.fid.summary()] if self.fid else []
        lines += [self.truth.summary()] if self.truth else []
        lines += [f"{part}: {', '.join(str(p) for p in paths)}" for part, paths in self.files.items()]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# -- one part each (the subcommands call these) ---------------------------------------

def compute_fid(snapshot, data: str, opts: FIDOptions, device: str = "cpu", model: str = "",
                cache_dir: str | Path | None = None) -> FIDResult:
    """FID overall and per view of a loaded snapshot against ``data``, its protocol recorded."""
    open_dataset(data, columns=TRAIN_COLUMNS, field="data")
    result = evaluate_fid(snapshot.generator, data, num_fakes=opts.num_fakes, seed=opts.seed,
                          truncation_psi=opts.truncation, extractor=get_extractor(opts.extractor, device),
                          per_view=opts.per_view, batch_size=opts.batch_size, method=opts.frechet,
                          cache_dir=cache_dir)
    result.protocol["model"] = model
    result.protocol["model_kimg"] = snapshot.info.get("kimg")
    return result


def compute_truth(G, data: str, opts: TruthOptions, cache_dir: str | Path | None = None,
                  extractor: str = "inception") -> TruthMetrics:
    """Truth metrics of a generator against the procedural world its dataset was painted in."""
    world = TruthWorld.from_options(data, int(G.cfg.output_resolution), opts, cache_dir or default_cache())
    device = next(G.parameters()).device
    features = get_extractor(extractor, device) if opts.inception else None
    return world.evaluate(G, num_avatars=opts.num_avatars, seed=opts.seed, extractor=features)


def write_walk(G, opts: WalkOptions, out_dir: Path) -> list[Path]:
    result = latent_walk(G, list(opts.seeds), opts.frames_per_seed, opts.columns, opts.yaw, opts.pitch,
                         opts.truncation)
    return save_outputs(result, out_dir, "walk", _suffixes(opts.formats), opts.fps).files


def write_turntable(G, opts: TurntableOptions, out_dir: Path) -> list[Path]:
    result = turntable(G, opts.seed, opts.frames, opts.pitch, opts.truncation)
    return save_outputs(result, out_dir, "turntable", _suffixes(opts.formats), opts.fps).files


def mesh_preview_path(out: Path) -> Path:
    return out.with_name(out.stem + "_preview.png")


def write_mesh(G, opts: MeshOptions, out: Path, preview: Path | None = None) -> tuple[object, list[Path]]:
    """Marching cubes of one identity -> (mesh, [mesh file, preview]). ValueError if no surface at ``iso``."""
    mesh = generator_mesh(G, seed_latent(G, opts.seed, opts.truncation), opts.resolution, opts.iso,
                          opts.smooth, opts.faces or None)
    paths = [export_mesh(mesh, out)]
    if opts.preview:
        preview = preview or mesh_preview_path(out)
        with atomic_path(preview, ".png") as tmp:
            Image.fromarray(preview_image(mesh)).save(tmp)
        paths.append(preview)
    return mesh, paths


# -- the stage --------------------------------------------------------------------------

def run_evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Every part in ``cfg.parts`` for one generator, under ``cfg.output_dir``."""
    # Check the inputs before any rendering.
    if "fid" in cfg.parts:
        open_dataset(cfg.data, columns=TRAIN_COLUMNS, field="data")
    out = writable_dir(cfg.output_dir, "output_dir")
    snapshot = load_generator(cfg.model, cfg.tracking_uri or None, device=cfg.device, field="model")
    dump_config(cfg, out / "evaluate_config.yaml")
    G = snapshot.generator
    fid, files, notes = None, {}, []

    # FID overall and per view group.
    if "fid" in cfg.parts:
        fid = compute_fid(snapshot, cfg.data, cfg.fid, cfg.device, cfg.model)
        files["fid"] = [fid.save_json(out / "fid.json")]

    # Truth metrics, where the procedural painter made the dataset.
    truth = None
    if "truth" in cfg.parts:
        if has_truth(cfg.data):
            truth = compute_truth(G, cfg.data, cfg.truth, extractor=cfg.fid.extractor)
            files["truth"] = [atomic_write(out / "truth.json", truth.to_json())]
        else:
            notes.append("no truth metrics: the dataset has no truth columns (only the procedural painter's have)")

    # Latent walk and turntable.
    if "walk" in cfg.parts:
        files["walk"] = write_walk(G, cfg.walk, writable_dir(out / "walk", "output_dir"))
    if "turntable" in cfg.parts:
        files["turntable"] = write_turntable(G, cfg.turntable, writable_dir(out / "turntable", "output_dir"))

    # Mesh: a young generator may have no surface at this level yet; that is a note, not a failure.
    if "mesh" in cfg.parts:
        target = writable_dir(out / "mesh", "output_dir") / f"avatar.{cfg.mesh.format}"
        try:
            _, files["mesh"] = write_mesh(G, cfg.mesh, target)
        except ValueError as exc:
            notes.append(f"no mesh: {str(exc).splitlines()[0]} (lower mesh.iso or train longer)")
    return EvaluateResult(output_dir=out, fid=fid, files=files, notes=notes, truth=truth)


def _suffixes(formats: list[str]) -> tuple[str, ...]:
    return tuple(f".{f}" for f in formats)
