"""The one resolver of MLflow model references (``models:/`` and ``runs:/``) into local folders.

Every stage that takes a registered model goes through :func:`resolve_model_uri`:
``--model`` of the evaluation commands (a generator), ``pipeline.lora`` of
generation (a LoRA), ``--prior`` of image-to-avatar. Accepted forms:

- ``models:/<name>/<version>``
- ``models:/<name>@<alias>``: the alias is resolved to its version first, so a
  moved alias is followed at once (the cache is keyed by the version, never by
  the alias text);
- ``models:/<name>/latest``: the highest version;
- ``runs:/<run id>/<path>``: an artifact of a run (run artifacts do not change).

Downloads land in ``<cache>/models/<key>``, written under a temporary name and
renamed, so concurrent readers (every Ray actor of a generation job) and a crash
mid-download never see a half folder. The key holds the registry, the name, the
version and the version's creation time, so a re-created store never serves a
stale copy.

Which registry: the ``tracking_uri`` argument, else ``$MLFLOW_TRACKING_URI``;
with neither, a one-line error (no local store is created behind the user's back).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from avatar3d.runtime import cache_dir as default_cache_dir
from avatar3d.tracking.tracker import sqlite_file

MLFLOW_SCHEMES = ("models:/", "runs:/")
_MODEL_URI = re.compile(r"models:/([^/@]+)(?:/([^/@]+)|@([A-Za-z0-9_.-]+))(/.*)?")
_RUN_URI = re.compile(r"runs:/([0-9a-zA-Z]+)(/.*)?")


def is_mlflow_uri(ref) -> bool:
    return bool(ref) and str(ref).startswith(MLFLOW_SCHEMES)


def registry_uri(tracking_uri: str | None, field: str, ref: str) -> str:
    """The store a reference is resolved in; one line naming ``field`` when none is set."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError(f"{field}: {ref} is an MLflow URI but no tracking store is set; pass the store "
                         "(e.g. sqlite:///outputs/gan/mlflow.db) or set MLFLOW_TRACKING_URI")
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        # Reading a model must not create a store: MLflow would make an empty database (and its folder).
        raise ValueError(f"{field}: no MLflow store at {uri} (no such file); pass the sqlite file the model "
                         "was registered in, e.g. sqlite:///outputs/gan/mlflow.db")
    return uri


def pinned_uri(ref: str, tracking_uri: str) -> tuple[str, str]:
    """-> (the artifact location of the fixed version or run, its cache key). Asks the registry for aliases."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    match = _MODEL_URI.fullmatch(ref)
    if match:
        name, version, alias, sub = match.groups()
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version == "latest":
            found = client.search_model_versions(f"name = '{_quote(name)}'", order_by=["version_number DESC"],
                                                 max_results=1)
            if not found:
                raise _not_found(ref, tracking_uri, "no versions")
            mv = found[0]
        elif version and version.isdigit():
            mv = client.get_model_version(name, version)
        else:
            raise ValueError(f"{ref}: pass models:/<name>/<version>, models:/<name>@<alias> or "
                             "models:/<name>/latest (registry stages are not supported)")
        digest = _digest(tracking_uri, name, mv.version, mv.creation_timestamp, sub or "")
        location = client.get_model_version_download_uri(name, mv.version).rstrip("/") + (sub or "")
        return location, f"{_safe(name)}-v{mv.version}-{digest}"
    match = _RUN_URI.fullmatch(ref)
    if match:
        run_id, sub = match.groups()
        run = client.get_run(run_id)  # fails early, with MLflow's message, for an unknown run
        location = run.info.artifact_uri.rstrip("/") + (sub or "")
        return location, f"run-{run_id}-{_digest(tracking_uri, run_id, sub or '')}"
    raise ValueError(f"{ref}: not an MLflow model URI; pass models:/<name>/<version>, models:/<name>@<alias> "
                     "or runs:/<run id>/<path>")


def resolve_model_uri(ref: str, tracking_uri: str | None = None, field: str = "--model",
                      cache_dir: str | Path | None = None) -> Path:
    """``models:/...`` or ``runs:/...`` -> the local folder holding its artifacts (downloaded once)."""
    ref = str(ref)
    uri = registry_uri(tracking_uri, field, ref)
    try:
        location, key = pinned_uri(ref, uri)
        target = Path(cache_dir or default_cache_dir()) / "models" / key
        if not target.is_dir():
            _download(location, uri, target)
    except MlflowException as exc:
        raise _not_found(ref, uri, _first_line(exc), field) from None
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return target


def _download(location: str, tracking_uri: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp), tracking_uri=tracking_uri)
        try:
            tmp.rename(target)
        except OSError:  # another process (a second Ray actor, say) finished first: keep its copy
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _not_found(ref: str, uri: str, reason: str, field: str = "") -> ValueError:
    prefix = f"{field}: " if field else ""
    return ValueError(f"{prefix}cannot fetch {ref} from {uri} ({reason}); check the name, version or alias, "
                      "and the tracking store (MLFLOW_TRACKING_URI)")


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _digest(*parts) -> str:
    return hashlib.sha256("\n".join(str(p) for p in parts).encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
