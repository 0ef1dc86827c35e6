"""Where a ``--model`` argument points, resolved once for every evaluation command.

Accepted forms:

- a snapshot file written by ``avatar3d train-gan`` (``*.safetensors``);
- ``models:/<name>/<version>`` or ``models:/<name>@<alias>``: a registered
  generator (:mod:`avatar3d.tracking.registry`); its ``snapshot`` artifact is
  downloaded from the MLflow store;
- ``runs:/<run id>/<path to a .safetensors>``: a snapshot logged in a run.

MLflow URIs need a tracking store: ``tracking_uri`` or ``$MLFLOW_TRACKING_URI``
(for the default train-gan set-up, ``sqlite:///outputs/gan/mlflow.db``).
Downloads go to ``<cache>/models/<sanitised uri>`` and are reused, so
repeated evaluations of one registered version fetch it once.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

MLFLOW_SCHEMES = ("models:/", "runs:/")


def is_mlflow_uri(ref: str) -> bool:
    return str(ref).startswith(MLFLOW_SCHEMES)


def resolve_snapshot(ref: str | Path, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """``--model`` value -> a local snapshot ``.safetensors`` path (downloaded if it is an MLflow URI)."""
    ref = str(ref)
    if not is_mlflow_uri(ref):
        path = Path(ref)
        if not path.is_file():
            raise FileNotFoundError(f"--model: {path} does not exist; pass a .safetensors snapshot from "
                                    "avatar3d train-gan or a models:/<name>/<version> URI")
        return path
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError(f"--model: {ref} is an MLflow URI but no tracking store is set; pass --tracking-uri "
                         "(e.g. sqlite:///outputs/gan/mlflow.db) or set MLFLOW_TRACKING_URI")
    from avatar3d.runtime import cache_dir as default_cache

    target = Path(cache_dir or default_cache()) / "models" / re.sub(r"[^A-Za-z0-9._@-]+", "_", ref)
    found = _find_snapshot(target)
    if found is None:
        _download(ref, uri, target)
        found = _find_snapshot(target)
    if found is None:
        raise ValueError(f"--model: {ref} holds no .safetensors snapshot; pass a generator registered by "
                         "avatar3d train-gan")
    return found


def _download(ref: str, tracking_uri: str, target: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        mlflow.set_tracking_uri(tracking_uri)
        # A registered model downloads as its pyfunc folder; the snapshot is one of its artifacts.
        mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(tmp))
    except MlflowException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(exc).splitlines()[0]
        raise ValueError(f"--model: cannot fetch {ref} from {tracking_uri} ({first}); check the name, version "
                         "and --tracking-uri") from None
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)  # a complete download only, so a crash never leaves a half file to reuse


def _find_snapshot(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(folder.rglob("*.safetensors"))
    return found[0] if found else None


def load_generator(ref: str | Path, tracking_uri: str | None = None, device: str = "cpu"):
    """``--model`` value -> :class:`avatar3d.training.checkpoint.Snapshot` (EMA generator, eval mode)."""
    from avatar3d.training.checkpoint import load_snapshot

    return load_snapshot(resolve_snapshot(ref, tracking_uri), device=device)
