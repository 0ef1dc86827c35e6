"""``pipeline.lora`` values -> something ``load_lora_weights`` takes.

* a local folder or ``.safetensors`` file, or a hub id: returned as is
  (``~`` expanded);
* ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (a LoRA
  registered by ``avatar3d lora-train``), or ``runs:/<run_id>/<path>``: the
  model is downloaded from the MLflow registry and the folder holding
  ``pytorch_lora_weights.safetensors`` is returned.

Which registry: the ``tracking_uri`` argument, else ``$MLFLOW_TRACKING_URI``
(the MLflow convention; Ray workers inherit it from the driver, a cluster
job sets it in its runtime_env), else MLflow's current tracking URI.

Downloads of a fixed version are cached under ``<cache>/lora/`` (see
``avatar3d.runtime.cache_dir``), keyed by the registry, the name, the
version and the version's creation time, so every Ray actor of a generation
job does not fetch it again, and a re-created store never serves a stale
copy. This module imports MLflow only for registry URIs.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
REGISTRY_SCHEMES = ("models:/", "runs:/")


def is_registry_uri(value: str | None) -> bool:
    return bool(value) and str(value).startswith(REGISTRY_SCHEMES)


def registry_tracking_uri(tracking_uri: str | None = None) -> str:
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow

    return mlflow.get_tracking_uri()


def resolve_lora(uri_or_path: str, tracking_uri: str | None = None, field: str = "pipeline.lora") -> str:
    """A LoRA reference -> a local path (registry URIs downloaded) or the hub id / path unchanged.

    Raises ValueError (one line, naming ``field``) when a registry URI cannot be resolved.
    """
    value = str(uri_or_path)
    if not is_registry_uri(value):
        return os.path.expanduser(value)
    from mlflow.exceptions import MlflowException

    uri = registry_tracking_uri(tracking_uri)
    try:
        folder = _download(value, uri)
    except MlflowException as err:
        reason = str(err.message if hasattr(err, "message") else err).splitlines()[0]
        raise ValueError(f"{field}={value!r}: not found in the MLflow registry at {uri} ({reason}): check the "
                         "name/version, or set MLFLOW_TRACKING_URI to the store lora-train registered it in") from None
    hits = sorted(Path(folder).rglob(LORA_WEIGHTS))
    if not hits:
        raise ValueError(f"{field}={value!r} holds no {LORA_WEIGHTS}: pass a LoRA registered by avatar3d lora-train")
    return str(hits[0].parent)


def _download(value: str, uri: str) -> str:
    import mlflow.artifacts

    key = _cache_key(value, uri)
    if key is None:  # "latest", stages, runs:/ : may change, so never cached
        dst = tempfile.mkdtemp(prefix="avatar3d-lora-")
        return mlflow.artifacts.download_artifacts(artifact_uri=value, dst_path=dst, tracking_uri=uri, registry_uri=uri)
    from avatar3d.runtime import cache_dir

    folder = cache_dir() / "lora" / key
    if folder.is_dir():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=value, dst_path=str(tmp), tracking_uri=uri, registry_uri=uri)
        try:
            tmp.rename(folder)
        except OSError:  # another process (e.g. a second Ray actor) got there first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def _cache_key(value: str, uri: str) -> str | None:
    """name-version-<hash of registry + creation time> for a fixed version or an alias; None otherwise."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([A-Za-z0-9_.-]+))", value)
    if not match:
        return None
    from mlflow import MlflowClient

    name, version, alias = match.groups()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    digest = hashlib.sha256(f"{uri}\n{name}\n{mv.version}\n{mv.creation_timestamp}".encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{safe}-v{mv.version}-{digest}"
