"""Small MLflow helpers for jobs: start a run, log a nested config, metrics and files.

Only job entry points call these. The default store is a local SQLite file
(``sqlite:///<folder>/mlflow.db``): it works offline and supports everything
MLflow offers (the plain-file store is deprecated in MLflow 3).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping

# MLflow caps a param value at 6000 characters (older servers: 500).
_MAX_PARAM_LEN = 500


# Read once, at import: ``mlflow.set_tracking_uri`` writes this variable into the environment, so
# a later read in the same process would see the previous job's store, not the user's setting.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def default_tracking_uri(folder) -> str:
    """Where runs go when a config leaves ``tracking_uri`` empty: ``$MLFLOW_TRACKING_URI`` as it was
    when the job started (a cluster's tracking server, set in the job's runtime env), else a sqlite
    store in ``folder``."""
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    path = Path(folder).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def use_experiment(tracking_uri: str, experiment: str):
    """Point MLflow at ``tracking_uri`` and ``experiment``, creating it if missing.

    With a local sqlite store, a new experiment keeps its artifacts beside the
    database (``<folder>/mlartifacts``); MLflow's default would be ``./mlruns``
    under whatever folder the job happened to start in.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None and tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        try:
            mlflow.create_experiment(experiment, artifact_location=(db.parent / "mlartifacts").resolve().as_uri())
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            pass
    return mlflow.set_experiment(experiment)


@contextlib.contextmanager
def start_run(tracking_uri: str, experiment: str, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> Iterator:
    """Context manager: an active MLflow run in ``experiment`` (created if missing)."""
    import mlflow

    use_experiment(tracking_uri, experiment)
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})) as run:
        yield run


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


def log_config(config: Mapping, artifact_name: str = "config.json") -> None:
    """Flattened params (searchable) plus the full config as a JSON artifact."""
    import mlflow

    mlflow.log_params(flatten(config))
    mlflow.log_dict(dict(config), artifact_name)


def log_run_config(run, config: Mapping) -> None:
    """:func:`log_config` for a fresh run; a resumed run keeps its params (MLflow params are
    write-once) and gets this resume's config as a timestamped artifact beside them."""
    import time

    import mlflow

    if run.data.params:
        mlflow.log_dict(dict(config), f"config-resume-{time.strftime('%Y%m%d-%H%M%S')}.json")
    else:
        log_config(config, artifact_name="config.json")


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_file(path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


RUN_NAME_TAG = "avatar3d.run_name"


@contextlib.contextmanager
def resume_or_start_run(tracking_uri: str, experiment: str, run_name: str) -> Iterator:
    """Re-open the latest MLflow run tagged with ``run_name`` (a resumed job logs on), else start one."""
    import mlflow

    exp = use_experiment(tracking_uri, experiment)
    found = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                               order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if found:
        with mlflow.start_run(run_id=found[0].info.run_id) as run:
            yield run
    else:
        with mlflow.start_run(run_name=run_name, tags={RUN_NAME_TAG: run_name}) as run:
            yield run
