"""The one tracker: a stage's run (or nothing), its config, metrics, files, registration; workers log by run id."""
import math

import pytest
from mlflow import MlflowClient

from tests import CONFIGS
from avatar3d.config import ConfigError, load_config
from avatar3d.tracking.options import TrackingOptions
from avatar3d.tracking.tracker import RunLogger, Tracker


def _options(tmp_path, **kw):
    return TrackingOptions(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="exp", **kw)


def test_disabled_tracking_opens_no_run_and_registers_nothing(tmp_path):
    called = []
    with Tracker(TrackingOptions(enabled=False), tmp_path, "run", stage="gan") as tracker:
        tracker.log_config({"a": 1})
        tracker.log_metrics({"loss": 1.0})
        assert tracker.register(lambda *a: called.append(a) or "x/1", "path", default="name") is None
    assert tracker.run_id is None and called == []
    assert not (tmp_path / "mlflow.db").exists()


def test_a_run_gets_config_finite_metrics_files_and_a_registration(tmp_path):
    artifact = tmp_path / "card.json"
    artifact.write_text("{}")
    with Tracker(_options(tmp_path), tmp_path, "gan-tiny", stage="gan") as tracker:
        tracker.log_config({"model": {"preset": "tiny"}, "batch_size": 4})
        tracker.log_metrics({"loss": 0.5, "fid": math.nan}, step=3)
        tracker.log_file(artifact, artifact_path="cards")

        def register(path, name):  # what a stage's register function does: log the model and register it
            client = MlflowClient(tracking_uri=tracker.uri, registry_uri=tracker.uri)
            client.create_registered_model(name)
            return f"{name}/{client.create_model_version(name, str(path), run_id=tracker.run_id).version}"

        version = tracker.register(register, artifact, default="avatar3d-gan")
    assert version == "avatar3d-gan/1"
    client = MlflowClient(tracking_uri=tracker.uri, registry_uri=tracker.uri)
    assert str(client.get_model_version_by_alias("avatar3d-gan", "candidate").version) == "1"  # the default alias
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"model.preset": "tiny", "batch_size": "4"}
    assert run.data.metrics == {"loss": 0.5}  # the NaN is dropped, not logged
    assert run.data.tags["avatar3d.stage"] == "gan" and run.info.run_name == "gan-tiny"
    assert [a.path for a in client.list_artifacts(tracker.run_id, "cards")] == ["cards/card.json"]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [3]


def test_a_stage_leaves_mlflows_process_wide_settings_as_it_found_them(tmp_path, monkeypatch):
    """A library caller's own MLflow set-up (or none) survives a stage: the Tracker used to leave MLflow pointed
    at its store, and export MLFLOW_TRACKING_URI to every process started afterwards."""
    import os

    import mlflow
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", None)
    with Tracker(_options(tmp_path), tmp_path, "gan-tiny", stage="gan") as tracker:
        assert mlflow.get_tracking_uri() == tracker.uri and mlflow.active_run() is not None
    assert utils._tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.active_run() is None
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    mlflow.set_tracking_uri(mine)
    with Tracker(_options(tmp_path), tmp_path, "gan-tiny-2", stage="gan"):
        pass
    assert mlflow.get_tracking_uri() == mine == os.environ["MLFLOW_TRACKING_URI"]


def test_resume_reopens_the_run_of_that_name_and_keeps_its_params(tmp_path):
    with Tracker(_options(tmp_path), tmp_path, "r", stage="prior", resume=True) as first:
        first.log_config({"lr": 1})
    with Tracker(_options(tmp_path), tmp_path, "r", stage="prior", resume=True) as second:
        second.log_config({"lr": 2})
        RunLogger(second.uri, second.run_id).log_metrics({"step_loss": 1.5}, step=7)  # a worker's view
    with Tracker(_options(tmp_path), tmp_path, "r", stage="prior") as fresh:  # no resume: a new run
        pass
    client = MlflowClient(tracking_uri=first.uri)
    assert second.run_id == first.run_id != fresh.run_id
    run = client.get_run(first.run_id)
    assert run.data.params == {"lr": "1"} and run.data.metrics == {"step_loss": 1.5}
    names = [a.path for a in client.list_artifacts(first.run_id)]
    assert "config.json" in names and any(n.startswith("config-resume-") for n in names)


def test_registry_name_and_validation():
    assert TrackingOptions().registry_name("avatar3d-gan") == "avatar3d-gan"
    assert TrackingOptions(register_name="mine").registry_name("avatar3d-gan") == "mine"
    assert TrackingOptions(register=False).registry_name("avatar3d-gan") is None
    with pytest.raises(ConfigError, match=r"tracking.register_name='bad name!'"):
        load_config(TrackingOptions, None, ["register_name=bad name!"])
    with pytest.raises(ConfigError, match="tracking.experiment is empty"):
        load_config(TrackingOptions, None, ["experiment= "])
    assert TrackingOptions().register_alias == "candidate"
    load_config(TrackingOptions, None, ["register_alias=champion-2"])
    load_config(TrackingOptions, None, ["register_alias="])  # none
    for bad in ("latest", "v3", "two words", "-x"):
        with pytest.raises(ConfigError, match=rf"tracking.register_alias='{bad}': use letters, digits"):
            load_config(TrackingOptions, None, [f"register_alias={bad}"])


def test_generate_refuses_registry_options():
    from avatar3d.datagen.config import GenerateConfig

    with pytest.raises(ConfigError, match="generate trains no model"):
        load_config(GenerateConfig, None, ["tracking.register=true"])


@pytest.mark.parametrize("uri, message", [
    ("bogus::uri", "is not an MLflow store URI"),
    ("mlflow.db", "is not an MLflow store URI"),
    ("sqlite:////nonexistent-avatar3d/x/mlflow.db", "the folder /nonexistent-avatar3d/x does not exist"),
    ("http://127.0.0.1:9", "no MLflow server answers there"),
])
def test_a_store_that_cannot_be_used_is_refused_in_seconds_and_nothing_is_created(uri, message, tmp_path):
    import time

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        Tracker(TrackingOptions(tracking_uri=uri), tmp_path, "r", stage="gan").check()
    assert time.perf_counter() - t0 < 10
    assert list(tmp_path.iterdir()) == []


def test_train_gan_with_an_unreachable_server_fails_before_writing(tmp_path, capsys):
    from avatar3d.cli import main

    out = tmp_path / "gan"
    data = "tests/fixtures/formats/dataset_v2"
    assert main(["train-gan", "--config", str(CONFIGS / "train_gan_tiny.yaml"), f"data.path={data}", f"output_dir={out}",
                 "batch_size=2", "tracking.tracking_uri=http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tracking.tracking_uri='http://127.0.0.1:9': no MLflow server answers" in err
    assert not out.exists()


def test_a_flaky_store_is_retried_and_a_dead_one_never_kills_the_run(tmp_path, monkeypatch, capsys):
    from avatar3d.logs import setup_logging

    setup_logging("INFO")  # as a Ray Train worker does: warnings on stderr in the one format
    with Tracker(_options(tmp_path), tmp_path, "flaky", stage="gan") as tracker:
        logger = RunLogger(tracker.uri, tracker.run_id)
    monkeypatch.setattr(RunLogger, "RETRY_DELAYS_S", (0.0, 0.0))
    real, calls = logger.client.log_batch, []

    def flaky(*args, **kwargs):  # fails twice, then the server is back
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("server restarting")
        return real(*args, **kwargs)

    logger.client.log_batch = flaky
    logger.log_metrics({"loss_G": 1.5}, step=4)
    assert len(calls) == 3 and logger.dropped == 0
    assert MlflowClient(tracking_uri=tracker.uri).get_run(tracker.run_id).data.metrics == {"loss_G": 1.5}

    def dead(*args, **kwargs):
        raise ConnectionError("no route to host")

    logger.client.log_batch = dead
    logger.log_metrics({"loss_G": 1.0}, step=5)  # does not raise: training goes on
    assert logger.dropped == 1 and "not logged after 3 tries (no route to host)" in capsys.readouterr().err


def test_a_server_that_answers_even_401_counts_as_there(tmp_path):
    import http.server
    import threading

    from avatar3d.tracking.tracker import check_store

    class Locked(http.server.BaseHTTPRequestHandler):  # an MLflow server behind an authenticating proxy
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Locked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        assert check_store(uri) == uri
    finally:
        server.shutdown()
