"""The suite's own hygiene (tests/conftest.py): no developer's MLflow server or Ray cluster is reached, and
MLflow's process-wide tracking URI set by one test does not leak into the next. Order matters here: pytest
runs a file's tests top to bottom."""
import os

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils

LEAKED = "sqlite:////nonexistent/leaked-by-a-test.db"


def test_no_developer_store_or_cluster_is_inherited():
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "RAY_ADDRESS"):
        assert name not in os.environ, name


def test_a_test_that_sets_the_global_tracking_uri():
    mlflow.set_tracking_uri(LEAKED)
    assert mlflow.get_tracking_uri() == LEAKED


def test_the_next_test_does_not_see_it():
    assert tracking_utils._tracking_uri != LEAKED and mlflow.get_tracking_uri() != LEAKED
