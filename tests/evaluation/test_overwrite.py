"""Outputs of an earlier walk / turntable / export-mesh / fid are kept unless --overwrite is passed, and a
replaced output is written whole (temporary file, then rename): no half-written file, no leftovers."""
import hashlib

import pytest
import torch

from avatar3d.cli import main
from tests.evaluation.helpers import micro_generator, surface_iso, write_micro_snapshot

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return write_micro_snapshot(tmp_path_factory.mktemp("snap") / "g.safetensors")


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_export_mesh_keeps_an_earlier_mesh_and_replaces_it_on_request(snapshot, tmp_path, capsys):
    out = tmp_path / "avatar.glb"
    mesh = ["export-mesh", "--model", str(snapshot), "--out", str(out), "--resolution", "20",
            "--iso", str(surface_iso(micro_generator()))]
    assert main([*mesh, "--seed", "0"]) == 0
    first = _digests(tmp_path)
    assert sorted(first) == ["avatar.glb", "avatar_preview.png"]
    capsys.readouterr()

    assert main([*mesh, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"avatar3d export-mesh: error: --out: {out} already exists (an earlier result); "
                   f"pass --overwrite to replace it, or another --out")
    assert _digests(tmp_path) == first

    assert main([*mesh, "--seed", "1", "--overwrite"]) == 0
    second = _digests(tmp_path)
    assert sorted(second) == sorted(first)  # replaced in place: no temporary files left beside them
    assert second["avatar.glb"] != first["avatar.glb"] and second["avatar_preview.png"] != first["avatar_preview.png"]


def test_walk_refuses_an_earlier_walk_but_not_a_turntable_beside_it(snapshot, tmp_path, capsys):
    walk = ["walk", "--model", str(snapshot), "--seeds", "0,1", "--frames-per-seed", "2", "--columns", "2",
            "--out", str(tmp_path), "--formats", "gif"]
    assert main([*walk]) == 0
    assert main(["turntable", "--model", str(snapshot), "--frames", "4", "--out", str(tmp_path),
                 "--formats", "gif"]) == 0  # other names in the same folder are no earlier result of a walk
    first = _digests(tmp_path)
    assert sorted(first) == ["turntable.gif", "turntable_grid.png", "walk.gif", "walk_grid.png"]
    capsys.readouterr()
    assert main([*walk[:4], "2,3", *walk[5:]]) == 2
    assert "--out: " + str(tmp_path / "walk_grid.png") + " already exists" in capsys.readouterr().err
    assert _digests(tmp_path) == first
    assert main([*walk[:4], "2,3", *walk[5:], "--overwrite"]) == 0
    second = _digests(tmp_path)
    assert sorted(second) == sorted(first)
    assert second["walk.gif"] != first["walk.gif"] and second["turntable.gif"] == first["turntable.gif"]
