"""evaluation/gan/weight_average.py: the averaged snapshot's parameters are the window's mean, its buffers the
newest snapshot's; a window outside the run, an existing --out, a damaged snapshot or another architecture is one
line and exit 2, with nothing written."""
import importlib.util
from pathlib import Path

import pytest
import torch

from avatar3d.gan.config import GANConfig
from avatar3d.gan.generator import TriPlaneGenerator
from avatar3d.gan.snapshot import load_snapshot, read_snapshot_metadata, save_snapshot
from tests.training.fixtures import MICRO_GAN

SCRIPT = Path(__file__).resolve().parents[2] / "evaluation" / "gan" / "weight_average.py"
_spec = importlib.util.spec_from_file_location("weight_average", SCRIPT)
weight_average = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(weight_average)


@pytest.fixture
def run(tmp_path):
    """Three checkpoint folders of one run (kimg 1, 2, 3), each generator with its own weights and w_avg."""
    cfg = GANConfig.tiny(**MICRO_GAN)
    folder = tmp_path / "checkpoints"
    for i, kimg in enumerate((1.0, 2.0, 3.0)):
        torch.manual_seed(i)
        G = TriPlaneGenerator(cfg)
        G.mapping_net.w_avg.fill_(float(i))
        save_snapshot(folder / f"kimg{kimg:08.3f}" / "snapshot.safetensors", G, cfg.to_dict(), {"kimg": kimg})
    return folder


def test_parameters_are_the_window_mean_and_buffers_the_newest(run, tmp_path, capsys):
    out = tmp_path / "avg.safetensors"
    assert weight_average.main(["--checkpoints", str(run), "--window", "2-3", "--out", str(out)]) == 0
    assert "2 snapshots averaged, 2-3 kimg" in capsys.readouterr().out
    snaps = {k: load_snapshot(p).generator for k, p in weight_average.checkpoints(run)}
    avg = load_snapshot(out).generator
    for name, param in avg.named_parameters():
        mean = (dict(snaps[2.0].named_parameters())[name] + dict(snaps[3.0].named_parameters())[name]) / 2
        torch.testing.assert_close(param, mean, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(dict(avg.named_parameters())["decoder.fc0.weight"],
                           dict(snaps[3.0].named_parameters())["decoder.fc0.weight"])
    assert torch.all(avg.mapping_net.w_avg == 2.0)  # the newest's buffer, not the mean 1.5
    info = read_snapshot_metadata(out)["info"]
    assert info["averaged_kimg"] == [2.0, 3.0] and info["kimg"] == 3.0


def test_bad_windows_are_one_line_and_exit_2(run, tmp_path, capsys):
    newest = run / "kimg0003.000" / "snapshot.safetensors"
    before = newest.read_bytes()
    cases = [("5-9", "--window=5-9: no checkpoint snapshot"), ("3-2", "LO <= HI"), ("x-2", "LO-HI")]
    for window, says in cases:
        assert weight_average.main(["--checkpoints", str(run), "--window", window,
                                    "--out", str(tmp_path / "a.safetensors")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0]
    assert weight_average.main(["--checkpoints", str(run), "--window", "1-3", "--out", str(newest)]) == 2
    assert "exists; pass a new file" in capsys.readouterr().err
    assert newest.read_bytes() == before and not (tmp_path / "a.safetensors").exists()


def test_a_damaged_or_foreign_snapshot_is_one_line_and_exit_2(run, tmp_path, capsys):
    # another architecture among the checkpoints cannot be averaged with the rest
    cfg = GANConfig.tiny(**{**MICRO_GAN, "decoder_hidden": 16})
    save_snapshot(run / "kimg0004.000" / "snapshot.safetensors", TriPlaneGenerator(cfg), cfg.to_dict(), {"kimg": 4.0})
    assert weight_average.main(["--checkpoints", str(run), "--window", "3-4", "--out", str(tmp_path / "a.st")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"--checkpoints={run}: ") and "another architecture" in err[0]
    # a cut-off file
    (run / "kimg0004.000" / "snapshot.safetensors").write_bytes(b"not a snapshot")
    assert weight_average.main(["--checkpoints", str(run), "--window", "1-2", "--out", str(tmp_path / "a.st")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "safetensors" in err[0]
    assert not (tmp_path / "a.st").exists()
