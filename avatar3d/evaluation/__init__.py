"""Evaluation and outputs (docs/method.md section 7): what users look at and compare.

    evaluate_fid(G, dataset_dir, num_fakes)  -> FIDResult(overall, per_view, protocol)   (fid.py)
    generator_mesh(G, ws, resolution, iso)   -> ExtractedMesh; export_mesh(mesh, "a.glb") (mesh.py)
    latent_walk(G, seeds) / turntable(G, seed) -> frames + grid; save_outputs(...)        (walk.py)
    load_generator("models:/name/1" or "snap.safetensors")                                 (models.py)

The CLI (``avatar3d fid | walk | turntable | export-mesh``) lives in
commands.py. This package imports nothing heavy at import time (the CLI's
parser imports it), so names are resolved lazily.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate_fid": "fid", "FIDResult": "fid", "FeatureStats": "fid", "frechet_distance": "fid",
    "get_extractor": "features", "InceptionFeatures": "features",
    "extract_mesh": "mesh", "generator_mesh": "mesh", "export_mesh": "mesh", "ExtractedMesh": "mesh",
    "seed_latent": "mesh", "preview_image": "mesh",
    "latent_walk": "walk", "turntable": "walk", "save_outputs": "walk", "write_video": "walk",
    "load_generator": "models", "resolve_snapshot": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"avatar3d.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'avatar3d.evaluation' has no attribute {name!r}")
