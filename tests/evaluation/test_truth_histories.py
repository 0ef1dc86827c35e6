"""evaluation/gan/truth_histories.py: a run's logged truth metrics and an asset card's history, kimg by kimg."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

SCRIPT = Path(__file__).resolve().parents[2] / "evaluation" / "gan" / "truth_histories.py"
_spec = importlib.util.spec_from_file_location("truth_histories", SCRIPT)
histories = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(histories)


def _store(tmp_path: Path) -> Path:
    """A sqlite store holding one run without truth metrics and one that logged them at 2048 and 4096 images."""
    db = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    other = client.create_run("0", run_name="no-truth").info.run_id
    client.log_metric(other, "loss_G", 1.0, step=2048)
    run = client.create_run("0", run_name="world").info.run_id
    for step, sil in ((2048, 0.71), (4096, 0.77)):
        client.log_metric(run, "truth_sil_agreement", sil, step=step)
        client.log_metric(run, "truth_sil_baseline", 0.88, step=step)
        client.log_metric(run, "truth_view_back", sil / 2, step=step)
    return db


def test_store_and_card_line_up_by_kimg(tmp_path):
    db = _store(tmp_path)
    run = histories.from_store(db, None)  # the one run with truth metrics, found without its name
    assert sorted(run) == [2.0, 4.1]
    assert run[4.1]["sil_agreement"] == 0.77 and run[2.0]["view_back"] == 0.355
    assert "view_side" not in run[2.0]  # not logged, not invented
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"truth_history": [{"kimg": 2.048, "sil_agreement": 0.70, "sil_baseline": 0.88}]}))
    assert histories.from_card(card) == {2.0: {"sil_agreement": 0.70, "sil_baseline": 0.88}}

    out = tmp_path / "h.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), f"card={card}", f"run={db}#world"],
                          capture_output=True, text=True, check=True)
    assert "| 2 | 0.700 | 0.710 | 0.880 |" in proc.stdout
    assert "| 4.1 |  | 0.770 | 0.880 |" in proc.stdout
    assert json.loads(out.read_text())["arms"]["run"]["4.1"]["sil_agreement"] == 0.77


def test_missing_source_is_one_line_and_status_2(tmp_path):
    out = tmp_path / "h.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), f"x={tmp_path / 'nope.db'}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "nope.db" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
