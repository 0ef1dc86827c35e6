"""The one MLflow tracker every stage uses: generation, GAN and prior training, LoRA training.

A stage's driver opens a :class:`Tracker` from its :class:`TrackingOptions`
(a no-op when tracking is off), logs its config, metrics and files through it,
and registers its model through :meth:`Tracker.register`. Ray Train workers
log into the driver's run through a :class:`RunLogger`, built from the run's
(tracking URI, run id) that the driver hands them in their typed context.

The default store is a local SQLite file (``sqlite:///<output_dir>/mlflow.db``):
it works offline and supports everything MLflow offers, the registry included.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_service

from avatar3d.config import ConfigError
from avatar3d.tracking.options import TrackingOptions

log = logging.getLogger(__name__)

# MLflow caps a param value at 6000 characters (older servers: 500).
_MAX_PARAM_LEN = 500
RUN_NAME_TAG = "avatar3d.run_name"
STAGE_TAG = "avatar3d.stage"

# Read once, at import: ``mlflow.set_tracking_uri`` writes this variable into the environment, so
# a later read in the same process would see the previous job's store, not the user's setting.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


SQLITE = "sqlite:///"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` store URI (relative to the current folder unless the path
    is absolute, as MLflow reads it); None for any other store."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def default_tracking_uri(folder) -> str:
    """Where runs go when the options leave ``tracking_uri`` empty: ``$MLFLOW_TRACKING_URI`` as it was
    when the job started (a cluster's tracking server, set in the job's runtime env), else a sqlite
    store in ``folder``."""
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    return f"{SQLITE}{Path(folder).resolve() / 'mlflow.db'}"  # the folder is made when a run opens


# Stores MLflow can open (tracking and registry); anything else is a typo to refuse before any work.
STORE_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")
HEALTH_TIMEOUT_S = 5.0


def check_store(uri: str, field: str = "tracking.tracking_uri") -> str:
    """Refuse, in one line and within seconds, a store this job could not log to -> ``uri``.

    A malformed URI, a sqlite file in a folder that does not exist, or an MLflow server that does
    not answer ``/health`` within :data:`HEALTH_TIMEOUT_S` (MLflow itself would retry for minutes).
    """
    if uri in ("databricks", "databricks-uc"):
        return uri
    scheme, sep, _ = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in STORE_SCHEMES:
        raise ConfigError(f"{field}={uri!r} is not an MLflow store URI: pass sqlite:///<path>.db, "
                          "http(s)://<server>, or leave it empty for a sqlite store in output_dir")
    db = sqlite_file(uri)
    if db is not None and not db.parent.is_dir():
        raise ConfigError(f"{field}={uri!r}: the folder {db.parent} does not exist; create it or fix the path")
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as reply:
                reply.read(64)
        except urllib.error.HTTPError:  # it answered (401 behind an auth proxy, say): a server is there
            pass
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out, bad host
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"{field}={uri!r}: no MLflow server answers there ({reason}); start it, fix "
                              "the URI, or pass tracking.enabled=false") from None
    return uri


@contextlib.contextmanager
def mlflow_globals_kept():
    """MLflow's fluent API keeps the tracking URI (exported to the environment for child processes too) and the
    active experiment process-wide; a stage puts them back as it found them, so a library caller's own MLflow
    set-up, and the next stage of a chain, are not pointed at this stage's store (what MLflow's own
    ``_use_tracking_uri`` does for the URI)."""
    uri, experiment = tracking_service._tracking_uri, fluent._active_experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uri)  # None unsets it, and the environment variable with it
        fluent._active_experiment_id = experiment


def use_experiment(tracking_uri: str, experiment: str):
    """Point MLflow at ``tracking_uri`` and ``experiment``, creating it if missing.

    With a local sqlite store, a new experiment keeps its artifacts beside the
    database (``<folder>/mlartifacts``); MLflow's default would be ``./mlruns``
    under whatever folder the job happened to start in.
    """
    mlflow.set_tracking_uri(tracking_uri)
    db = sqlite_file(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None and db is not None:
        try:
            mlflow.create_experiment(experiment, artifact_location=(db.parent / "mlartifacts").resolve().as_uri())
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            pass
    return mlflow.set_experiment(experiment)


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """{"pipeline": {"steps": 4}} -> {"pipeline.steps": "4"} (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            out[name] = text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."
    return out


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


class RunLogger:
    """Logs into one existing run by id, through a stateless client (safe on Ray workers: no global
    MLflow state, no active run).

    Tracking never kills a run: a call that fails (the server restarting, a network blip) is retried
    with backoff (:data:`RETRY_DELAYS_S`), then dropped with a warning and counted in ``dropped``.
    """

    RETRY_DELAYS_S = (1.0, 4.0, 15.0)

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.dropped = 0

    def _call(self, what: str, fn: Callable[..., Any], *args, **kwargs) -> None:
        for delay in (*self.RETRY_DELAYS_S, None):
            try:
                fn(*args, **kwargs)
                return
            except Exception as exc:  # MlflowException, OSError, requests' errors: all transient here
                if delay is None:
                    self.dropped += 1
                    log.warning(f"MLflow: {what} not logged after {len(self.RETRY_DELAYS_S) + 1} tries "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); training goes on")
                    return
                time.sleep(delay)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite values only (a NaN would hide the curve in MLflow's UI)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, int(step)) for k, v in _finite(metrics).items()]
        self._call(f"metrics at step {step}", self.client.log_batch, self.run_id, metrics=batch)

    def log_image(self, image, artifact_file: str) -> None:
        self._call(artifact_file, self.client.log_image, self.run_id, image, artifact_file=artifact_file)

    def log_file(self, path, artifact_path: str | None = None) -> None:
        self._call(str(path), self.client.log_artifact, self.run_id, str(path), artifact_path=artifact_path)

    def log_folder(self, path, artifact_path: str | None = None) -> None:
        self._call(str(path), self.client.log_artifacts, self.run_id, str(path), artifact_path=artifact_path)


class Tracker:
    """One stage's MLflow run (driver side), or nothing at all when ``options.enabled`` is false.

    ``resume=True`` re-opens the latest run tagged with this run name (a resumed
    training job logs on in the same run); otherwise every entry starts a run::

        with Tracker(cfg.tracking, output_dir, cfg.run_name, stage="gan", resume=True) as tracker:
            tracker.log_config({...})
            ...                                   # workers get tracker.uri / tracker.run_id
            tracker.log_metrics({"train_wall_s": 12.0})
            version = tracker.register(register_generator, snapshot, default="avatar3d-gan")
    """

    def __init__(self, options: TrackingOptions, output_dir, run_name: str, stage: str,
                 resume: bool = False, tags: Mapping[str, str] | None = None):
        self.options, self.output_dir, self.stage, self.resume = options, Path(output_dir), stage, resume
        self.run_name = options.run_name or run_name
        self.tags = {STAGE_TAG: stage, RUN_NAME_TAG: self.run_name, **dict(tags or {})}
        self.uri: str | None = None
        self.run = None
        self.logger: RunLogger | None = None
        self._stack = contextlib.ExitStack()

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    def check(self) -> "Tracker":
        """Fail now, in one line, if the store cannot be used (call before any work; entering does it too)."""
        if self.enabled and self.options.tracking_uri:
            check_store(self.options.tracking_uri)
        return self

    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        self.check()
        self.uri = self.options.tracking_uri or default_tracking_uri(self.output_dir)
        self._stack.enter_context(mlflow_globals_kept())  # exited last: after the run has ended
        db = sqlite_file(self.uri)
        if not self.options.tracking_uri and db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        experiment = use_experiment(self.uri, self.options.experiment)
        found = []
        if self.resume:
            found = mlflow.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.`{RUN_NAME_TAG}` = '{self.run_name}'",
                                       order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if found:
            self.run = self._stack.enter_context(mlflow.start_run(run_id=found[0].info.run_id))
        else:
            self.run = self._stack.enter_context(mlflow.start_run(run_name=self.run_name, tags=self.tags))
        log.info(f"MLflow: {'resumed' if found else 'new'} run {self.run_name} ({self.run_id}) in experiment "
                 f"{self.options.experiment}, {self.uri}")
        self.logger = RunLogger(self.uri, self.run_id)
        return self

    def __exit__(self, *exc) -> bool:
        return bool(self._stack.__exit__(*exc))

    # -- what a stage logs ------------------------------------------------------------

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Flattened params (searchable) plus the full config as ``config.json``. A resumed run keeps
        its params (MLflow params are write-once) and gets this resume's config as a timestamped file."""
        if self.run is None:
            return
        if self.run.data.params:
            mlflow.log_dict(dict(config), f"config-resume-{time.strftime('%Y%m%d-%H%M%S')}.json")
        else:
            mlflow.log_params(flatten(config))
            mlflow.log_dict(dict(config), "config.json")

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step)

    def log_file(self, path, artifact_path: str | None = None) -> None:
        if self.logger is not None:
            self.logger.log_file(path, artifact_path)

    def log_folder(self, path, artifact_path: str | None = None) -> None:
        if self.logger is not None:
            self.logger.log_folder(path, artifact_path)

    def register(self, register_fn: Callable[..., str], *args, default: str) -> str | None:
        """``register_fn(*args, name)`` inside this run (it logs the model as a pyfunc and registers
        it) under ``options.register_name`` or ``default``; None when this run registers nothing.
        -> "<name>/<version>"."""
        name = self.options.registry_name(default)
        if self.run is None or name is None:
            return None
        version = register_fn(*args, name)
        if self.options.register_alias:
            client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            client.set_registered_model_alias(name, self.options.register_alias, version.rpartition("/")[2])
            log.info(f"registered models:/{version} as models:/{name}@{self.options.register_alias}")
        return version
