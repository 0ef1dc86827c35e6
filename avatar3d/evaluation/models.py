"""Where a ``--model`` argument points, resolved once for every evaluation command.

Accepted forms:

- a snapshot file written by ``avatar3d train-gan`` (``*.safetensors``);
- ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or
  ``models:/<name>/latest``: a registered generator
  (:mod:`avatar3d.training.registry`), whose ``snapshot`` artifact is fetched
  through the project's one resolver, :func:`avatar3d.tracking.models.resolve_model_uri`;
- ``runs:/<run id>/<path to a .safetensors>``: a snapshot logged in a run.

MLflow URIs need a tracking store: ``tracking_uri`` or ``$MLFLOW_TRACKING_URI``
(for the default train-gan set-up, ``sqlite:///outputs/gan/mlflow.db``).
"""
from __future__ import annotations

from pathlib import Path

from avatar3d.gan.snapshot import Snapshot, load_snapshot
from avatar3d.tracking.models import is_mlflow_uri, resolve_model_uri


def resolve_snapshot(ref: str | Path, tracking_uri: str | None = None, cache_dir: str | Path | None = None,
                     field: str = "--model") -> Path:
    """``--model`` value -> a local snapshot ``.safetensors`` path (downloaded if it is an MLflow URI)."""
    ref = str(ref)
    if not is_mlflow_uri(ref):
        path = Path(ref)
        if not path.is_file():
            raise FileNotFoundError(f"{field}: {path} does not exist; pass a .safetensors snapshot from "
                                    "avatar3d train-gan or a models:/<name>/<version> URI")
        return path
    folder = resolve_model_uri(ref, tracking_uri, field=field, cache_dir=cache_dir)
    found = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else [folder]
    if not found or found[0].suffix != ".safetensors":
        raise ValueError(f"{field}: {ref} holds no .safetensors snapshot; pass a generator registered by "
                         "avatar3d train-gan")
    return found[0]


def load_generator(ref: str | Path, tracking_uri: str | None = None, device: str = "cpu",
                   field: str = "--model") -> Snapshot:
    """``--model`` value -> :class:`avatar3d.gan.snapshot.Snapshot` (EMA generator, eval mode)."""
    return load_snapshot(resolve_snapshot(ref, tracking_uri, field=field), device=device)
