"""evaluation/ablation/ablation_discriminator.py: the runner works on a tiny budget, and RULE.md's decision
is computed as written (the real runs and their table: evaluation/ablation/README.md)."""
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "evaluation" / "ablation" / "ablation_discriminator.py"


def _load():
    spec = importlib.util.spec_from_file_location("ablation_discriminator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablation = _load()


def _row(mode, seed, back, kid, level="default", kimg=8.0):
    metrics = {k: 0.5 for k in ablation.SECONDARY}
    metrics.update({f"truth_view_{g}": 0.5 for g in ("front", "side")})
    metrics.update({f"truth_kid_inception_{g}": 0.1 for g in ("front", "side")})
    metrics.update(truth_view_back=back, truth_kid_inception_back=kid)
    return {"level": level, "d_mode": mode, "seed": seed, "metrics": metrics, "kimg": kimg,
            "counts": {"view_per_group": 96, "sil_avatars": 32}, "budget": {"kimg": kimg, "batch": 8, "preset": "tiny"},
            "curves": {}, "painted_by": "avatar3d/procedural-painter-v1",
            "training_run": {"tracking_uri": "sqlite:///x.db", "run_id": "r"}}


@pytest.mark.parametrize("c2f, fine, verdict", [
    # back-view consistency and back KID both better by far more than 2 spreads (spread 0.01 / 0.001)
    (((0.80, 0.010), (0.82, 0.011), (0.81, 0.012)), ((0.50, 0.030), (0.52, 0.031), (0.51, 0.032)),
     "coarse_to_fine wins"),
    (((0.50, 0.030), (0.52, 0.031), (0.51, 0.032)), ((0.80, 0.010), (0.82, 0.011), (0.81, 0.012)), "fine wins"),
    # consistency better, KID not: the rule asks for both
    (((0.80, 0.030), (0.82, 0.031), (0.81, 0.032)), ((0.50, 0.030), (0.52, 0.031), (0.51, 0.032)),
     "not separated at this budget"),
    # a gap inside 2 spreads (means 0.61 vs 0.55, spread 0.1)
    (((0.51, 0.010), (0.61, 0.011), (0.71, 0.012)), ((0.45, 0.030), (0.55, 0.031), (0.65, 0.032)),
     "not separated at this budget"),
])
def test_the_rule_decides_on_both_primary_measures_beyond_two_spreads(c2f, fine, verdict):
    rows = [_row("coarse_to_fine", s, *v) for s, v in enumerate(c2f)] + [_row("fine", s, *v) for s, v in enumerate(fine)]
    decision = ablation.decide(rows, "default", 8.0)
    assert decision["verdict"] == verdict
    back = [v[0] for v in c2f]
    spread = max(float(np.std(back, ddof=1)), float(np.std([v[0] for v in fine], ddof=1)))
    gap = decision["gaps"]["truth_view_back"]
    assert gap["spread"] == pytest.approx(spread)
    assert gap["gap_in_spreads"] == pytest.approx((sum(back) - sum(v[0] for v in fine)) / 3 / spread)
    assert ablation.decide(rows[:1] + rows[3:], "default", 8.0)["verdict"] == "waits for every mode's seeds 0, 1, 2"
    assert ablation.decide(rows[:2] + rows[3:5], "default", 8.0)["verdict"].startswith("waits")  # 2 of 3 seeds
    # the same runs scored again at a longer budget are decided apart, never pooled with the shorter one
    longer = [_row("coarse_to_fine", s, 0.5, 0.03, kimg=16.0) for s in range(3)]
    longer += [_row("fine", s, 0.5, 0.03, kimg=16.0) for s in range(3)]
    assert ablation.decide(rows + longer, "default", 8.0) == decision
    assert ablation.decide(rows + longer, "default", 16.0)["gaps"]["truth_view_back"]["mean_coarse_to_fine"] == 0.5


def test_the_cost_check_flags_a_worse_group_when_labels_are_right():
    rows = [_row("coarse_to_fine", s, 0.5 + 0.01 * s, 0.02, level="none") for s in range(3)]
    rows += [_row("fine", s, 0.8 + 0.01 * s, 0.02, level="none") for s in range(3)]
    assert ablation.cost_when_right(rows, 8.0) == {"kimg": 8.0, "costs_something": True,
                                                   "worse_on": ["truth_view_back"]}
    same = [dict(r, d_mode="fine") for r in rows[:3]]
    assert ablation.cost_when_right(rows[:3] + same, 8.0)["costs_something"] is False
    assert ablation.cost_when_right(rows[:3], 8.0) is None  # no fine runs at level none
    assert ablation.cost_when_right(rows, 16.0) is None  # no runs at that budget


def test_levels_are_the_ones_rule_md_froze():
    text = (ROOT / "evaluation" / "ablation" / "RULE.md").read_text()
    for level, rates in ablation.LEVELS.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {level} "))
        numbers = [float(x) for x in re.findall(r"\| ([0-9.]+)", line)]
        assert numbers == [rates[k] for k in ("side_error_rate", "side_yaw_error_deg", "side_pitch_error_deg",
                                              "back_janus_rate", "back_flip_rate")], level


def test_the_budget_check_names_a_run_past_the_budget_and_one_short_of_it():
    from types import SimpleNamespace

    args = SimpleNamespace(kimg=8.0, batch=8)
    ablation.check_budget(args, "r", 8.0)
    ablation.check_budget(args, "r", 8.007)  # within one batch past the budget
    ablation.check_budget(args, "r", 4.0, at_least=False)  # before training: it will be trained on
    with pytest.raises(ablation.BudgetError, match=r"^--kimg 8: run r is already at 16 kimg and cannot be scored "
                                                   r"at a shorter budget"):
        ablation.check_budget(args, "r", 16.0, at_least=False)
    with pytest.raises(ablation.BudgetError, match=r"^--kimg 8: run r ended at 4 kimg, short of the budget; run the "
                                                   r"same command again"):
        ablation.check_budget(args, "r", 4.0)


def test_a_damaged_snapshot_is_a_budget_error_naming_it(tmp_path):
    """train_and_score reads a run's kimg through this, before and after training; main prints a BudgetError as one
    line and exits 2 (the runner test shows that path with a run past the budget)."""
    bad = tmp_path / "network-snapshot-final.safetensors"
    bad.write_bytes(b"not a snapshot")
    with pytest.raises(ablation.BudgetError, match=rf"^{bad}: cannot read the run's kimg \(not a readable generator "
                                                   r"snapshot\); move its run folder aside"):
        ablation.snapshot_kimg(bad)
    assert bad.read_bytes() == b"not a snapshot"


@pytest.fixture
def ray_of_the_runner():
    """The runner starts a local Ray (as its CLI does); stop it after the test, so the next module's Ray can start."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_the_runner_trains_scores_and_aggregates_on_a_tiny_budget(tmp_path, capsys, monkeypatch, ray_of_the_runner):
    """One micro run through the real code path (procedural data, Ray Train, truth metrics, Inception KID),
    then --aggregate: table, JSON, curves, one comparison run in MLflow."""
    out = tmp_path / "abl"
    argv = ["--out", str(out), "--preset", "micro", "--images", "32", "--size", "32", "--kimg", "0.016",
            "--kimg-per-tick", "0.008", "--truth-ticks", "1", "--snapshot-ticks", "1", "--per-group", "6",
            "--curve-per-group", "4", "--num-identities", "4", "--num-avatars", "4", "--modes", "coarse_to_fine",
            "--seeds", "0", "--classifier-train", "24", "--classifier-steps", "5"]
    assert ablation.main(argv) == 0
    row = json.loads((out / "results" / "ablation-default-coarse_to_fine-s0-0.016kimg.json").read_text())
    assert row["kimg"] == pytest.approx(0.016) and row["procedural"] == ablation.LEVELS["default"]
    assert row["counts"]["view_per_group"] == 6 and 0.0 <= row["metrics"]["truth_view_back"] <= 1.0
    # RULE.md's frozen protocol: held-out identities with no attributes named, in the curves and the final scores
    assert row["protocol"]["heldout_attributes"] == "none"
    run_cfg = yaml.safe_load((out / "runs" / "coarse_to_fine" / "ablation-default-coarse_to_fine-s0" / "config.yaml")
                             .read_text())
    assert run_cfg["truth"]["heldout_attributes"] == "none"
    assert row["metrics"]["truth_kid_inception_back"] == row["metrics"]["truth_kid_inception_back"]  # not NaN
    assert [p[0] for p in row["curves"]["truth_view_back"]] == pytest.approx([0.008, 0.016])
    assert (out / "results" / "ablation-default-coarse_to_fine-s0-0.016kimg-front-back.png").stat().st_size > 0
    assert ablation.main(argv) == 0 and "done before, kept" in capsys.readouterr().out  # no second run

    # a longer budget resumes the same training run (its curve goes on) and is scored beside the shorter one
    longer = argv[:argv.index("--kimg")] + ["--kimg", "0.024"] + argv[argv.index("--kimg") + 2:]
    assert ablation.main(longer) == 0
    row2 = json.loads((out / "results" / "ablation-default-coarse_to_fine-s0-0.024kimg.json").read_text())
    assert row2["kimg"] == pytest.approx(0.024) and row2["training_run"] == row["training_run"]
    assert [p[0] for p in row2["curves"]["truth_view_back"]] == pytest.approx([0.008, 0.016, 0.024])
    assert row2["metrics"] != row["metrics"]  # another generator was scored
    # a shorter budget than the run has reached cannot be scored: one line, exit 2, nothing written, and
    # refused from the run's final snapshot before any training starts
    (out / "results" / "ablation-default-coarse_to_fine-s0-0.016kimg.json").rename(out / "kept.json")
    capsys.readouterr()

    def no_training(cfg):
        raise AssertionError("trained a run that is past the budget")

    monkeypatch.setattr("avatar3d.training.job.run_train_gan", no_training)
    assert ablation.main(argv) == 2
    assert "already at 0.024 kimg and cannot be scored at a shorter budget" in capsys.readouterr().err
    assert not (out / "results" / "ablation-default-coarse_to_fine-s0-0.016kimg.json").exists()
    (out / "kept.json").rename(out / "results" / "ablation-default-coarse_to_fine-s0-0.016kimg.json")

    assert ablation.main(["--out", str(out), "--aggregate"]) == 0
    table = (out / "ablation.md").read_text()
    assert "| default | 0.016 | coarse_to_fine | 0 |" in table and "| default | 0.024 | coarse_to_fine | 0 |" in table
    assert table.count("waits for every mode's seeds") == 2  # one per budget, and no verdict from one seed
    assert (out / "curves.png").stat().st_size > 0 and (out / "front_back.png").stat().st_size > 0
    import mlflow

    runs = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").get_experiment_by_name(
            ablation.EXPERIMENT).experiment_id])
    by_kimg = {r.data.tags["kimg"]: r for r in runs}
    assert sorted(by_kimg) == ["0.016", "0.024"] and {r.data.tags["d_mode"] for r in runs} == {"coarse_to_fine"}
    assert by_kimg["0.016"].data.metrics["truth_view_back"] == pytest.approx(row["metrics"]["truth_view_back"])


def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys):
    assert ablation.main(["--out", str(tmp_path), "--modes", "fine,sharp"]) == 2
    assert ablation.main(["--out", str(tmp_path), "--seeds", "0,x"]) == 2
    assert ablation.main(["--out", str(tmp_path), "--kimg", "8.0000001"]) == 2
    assert ablation.main(["--out", str(tmp_path / "empty"), "--aggregate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "sharp" in err[0] and "--seeds" in err[1] and "--kimg" in err[2]
    assert "run the ablation first" in err[3]
