"""Pickle-free trees, written atomically."""
import json

import pytest
import torch

from avatar3d.atomic import atomic_folder
from avatar3d.safeio import TREE_STRUCTURE, load_tree, save_tree


def test_tree_round_trip_keeps_types_and_values(tmp_path):
    opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt.step()  # materialise state
    tree = {"w": torch.arange(6.0).reshape(2, 3), 3: "int key", "t": (1, 2.5, None, True), "l": [torch.ones(1, dtype=torch.int64)],
            "opt": opt.state_dict()}
    save_tree(tree, tmp_path / "t")
    back = load_tree(tmp_path / "t")
    assert torch.equal(back["w"], tree["w"]) and back[3] == "int key" and back["t"] == (1, 2.5, None, True)
    assert back["l"][0].dtype == torch.int64
    assert back["opt"]["param_groups"][0]["betas"] == (0.0, 0.99)
    opt.load_state_dict(back["opt"])  # accepted by torch as is
    # The structure file is plain JSON: nothing to unpickle.
    json.loads((tmp_path / "t" / TREE_STRUCTURE).read_text())


def test_unsupported_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store a object"):
        save_tree({"x": object()}, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_failed_write_keeps_the_previous_version(tmp_path):
    save_tree({"v": 1}, tmp_path / "t")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "t") as tmp:
            (tmp / "partial").write_text("half")
            raise RuntimeError("disk full")
    assert load_tree(tmp_path / "t") == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temp folder left behind
    save_tree({"v": 2}, tmp_path / "t")
    assert load_tree(tmp_path / "t") == {"v": 2}
