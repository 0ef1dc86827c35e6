"""evaluation/gan/truth_histories.py: a run's logged truth metrics and an asset card's history, kimg by kimg."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

SCRIPT = Path(__file__).resolve().parents[2] / "evaluation" / "gan" / "truth_histories.py"
_spec = importlib.util.spec_from_file_location("truth_histories", SCRIPT)
histories = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(histories)


def _store(tmp_path: Path) -> Path:
    """A sqlite store: one run without truth metrics and two that logged them (``world`` at 2048 and 4096
    images, ``other`` at 2048)."""
    db = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.log_metric(client.create_run("0", run_name="no-truth").info.run_id, "loss_G", 1.0, step=2048)
    run = client.create_run("0", run_name="world").info.run_id
    for step, sil in ((2048, 0.71), (4096, 0.77)):
        client.log_metric(run, "truth_sil_agreement", sil, step=step)
        client.log_metric(run, "truth_sil_baseline", 0.88, step=step)
        client.log_metric(run, "truth_view_back", sil / 2, step=step)
    client.log_metric(client.create_run("0", run_name="other").info.run_id, "truth_sil_agreement", 0.5, step=2048)
    return db


def _run(tmp_path, *arms):
    out = tmp_path / "h.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *arms], capture_output=True, text=True)
    return proc, out


def test_store_and_card_line_up_by_kimg(tmp_path):
    db = _store(tmp_path)
    run = histories.from_store(db, "world")
    assert sorted(run) == [2.048, 4.096]
    assert run[4.096]["sil_agreement"] == 0.77 and run[2.048]["view_back"] == 0.355
    assert "view_side" not in run[2.048]  # not logged, not invented
    assert histories.from_store(db, "other") == {2.048: {"sil_agreement": 0.5}}
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"truth_history": [{"kimg": 2.048, "sil_agreement": 0.70, "sil_baseline": 0.88}]}))
    assert histories.from_card(card) == {2.048: {"sil_agreement": 0.70, "sil_baseline": 0.88}}

    proc, out = _run(tmp_path, f"card={card}", f"run={db}#world")
    assert proc.returncode == 0, proc.stderr
    assert "| 2.048 | 0.700 | 0.710 | 0.880 |" in proc.stdout
    assert "| 4.096 |  | 0.770 | 0.880 |" in proc.stdout
    assert json.loads(out.read_text())["arms"]["run"]["4.096"]["sil_agreement"] == 0.77


def test_two_runs_with_truth_need_a_name(tmp_path):
    db = _store(tmp_path)
    with pytest.raises(histories.SourceError, match=r"2 runs with truth metrics.*\['other', 'world'\]"):
        histories.from_store(db, None)
    proc, out = _run(tmp_path, f"run={db}")
    assert proc.returncode == 2 and "SOURCE#run_name" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("make", [
    lambda d: d / "nope.db",  # missing
    lambda d: (d / "card.json").write_text('{"kimg": 1}') and d / "card.json",  # a card without a history
    lambda d: (d / "broken.json").write_text("{") and d / "broken.json",  # not JSON
    lambda d: (d / "notes.db").write_text("not a database") and d / "notes.db",  # not sqlite
])
def test_bad_source_is_one_line_and_status_2(tmp_path, make):
    source = make(tmp_path)
    before = source.read_bytes() if source.exists() else None
    proc, out = _run(tmp_path, f"x={source}")
    assert proc.returncode == 2 and source.name in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    assert (source.read_bytes() if source.exists() else None) == before  # the input is left as it was


def test_a_name_twice_is_refused(tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"truth_history": [{"kimg": 2.048, "sil_agreement": 0.7}]}))
    proc, out = _run(tmp_path, f"a={card}", f"a={card}")
    assert proc.returncode == 2 and "each NAME once" in proc.stderr and not out.exists()
