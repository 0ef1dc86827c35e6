"""One logging set-up: one format on stderr, a level from the argument or the environment, noise hidden."""
import logging
import os
import subprocess
import sys
import warnings

import pytest

from avatar3d.logs import LEVEL_ENV, setup_logging


def test_one_format_on_stderr_and_warnings_named(capsys):
    setup_logging("INFO")
    log = logging.getLogger("avatar3d.training.job")
    log.info("dataset: 8 rows")
    log.warning("bf16 on CPU")
    log.debug("hidden")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("[") and err[0].endswith("] dataset: 8 rows")
    assert err[1].endswith("] WARNING: bf16 on CPU")
    ours = lambda: [h for h in logging.getLogger("avatar3d").handlers if type(h).__name__ == "_StderrHandler"]  # noqa: E731
    assert len(ours()) == 1  # (pytest may add its own capture handlers beside it)
    setup_logging("INFO")  # idempotent: still one handler, one line per record
    assert len(ours()) == 1


def test_level_from_the_environment_and_a_bad_one_named(monkeypatch):
    monkeypatch.setenv(LEVEL_ENV, "warning")
    assert setup_logging().level == logging.WARNING
    monkeypatch.setenv(LEVEL_ENV, "chatty")
    with pytest.raises(ValueError, match=r"log level 'chatty' is not known: pass DEBUG, INFO, WARNING or ERROR"):
        setup_logging()
    setup_logging("INFO")


def test_third_party_noise_is_hidden_below_debug_only():
    probe = ("import warnings, sys\nfrom avatar3d.logs import setup_logging\nsetup_logging(sys.argv[1])\n"
             "warnings.warn_explicit('registry clash', UserWarning, 'x.py', 1, module='controlnet_aux.sam')\n"
             "warnings.warn_explicit('our own', UserWarning, 'y.py', 1, module='avatar3d.report')\n")
    quiet = subprocess.run([sys.executable, "-c", probe, "INFO"], capture_output=True, text=True, timeout=60)
    loud = subprocess.run([sys.executable, "-c", probe, "DEBUG"], capture_output=True, text=True, timeout=60)
    assert "registry clash" not in quiet.stderr and "our own" in quiet.stderr
    assert "registry clash" in loud.stderr and "our own" in loud.stderr


@pytest.mark.parametrize("flag, shown", [(None, False), ("-v", True)])
def test_mlflow_store_creation_lines_are_hidden_unless_verbose(tmp_path, flag, shown):
    """A new sqlite store made MLflow print two INFO lines of its own, so a refusal after it was no longer one
    line; the CLI quiets MLflow's loggers below WARNING (``-v`` shows them) and the tracker logs the run."""
    probe = ("import os, sys\nfrom avatar3d.cli import main\n"
             "main([*sys.argv[2:], 'prompts', '--n', '1'])\n"
             "import mlflow\nmlflow.set_tracking_uri('sqlite:///' + sys.argv[1])\nmlflow.search_experiments()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_LOGGING_LEVEL", LEVEL_ENV)}
    run = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "m.db"), *([flag] if flag else [])],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "m.db").is_file()  # the store was made: the lines were due
    assert ("Creating initial MLflow database tables" in run.stderr) is shown, run.stderr
