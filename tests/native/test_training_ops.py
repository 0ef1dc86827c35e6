"""The compiled CPU ops are opt-in per process and never change what inference renders.

Each process case runs in a fresh interpreter: enabling the ops is process-wide."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from avatar3d import native

ROOT = Path(__file__).resolve().parents[2]
# A tiny generator, rendered in eval mode (as a snapshot consumer does) and in training mode.
RENDER = """
    import json, sys, torch
    from avatar3d.gan import GANConfig, TriPlaneGenerator
    from avatar3d.scene.cameras import camera_label
    torch.set_num_threads(1)

    def render(G, seed=1):
        torch.manual_seed(seed)  # the renderer's stratified and importance samples draw from it
        z = torch.randn(2, G.z_dim)
        c = torch.tensor(camera_label([-30.0, 40.0], [0.0, 10.0]), dtype=torch.float32)
        with torch.no_grad():
            return G(z, c).image
"""


def _env(**extra) -> dict[str, str]:
    """This checkout first on the path, whatever the working folder."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _run(code: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RENDER) + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=600, env=_env(**env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_inference_never_builds_or_loads_the_compiled_ops(tmp_path):
    ext_dir, snapshot = tmp_path / "torch_extensions", tmp_path / "g.safetensors"
    out = _run(f"""
        from avatar3d import native
        from avatar3d.gan.snapshot import load_snapshot, save_snapshot
        torch.manual_seed(0)
        cfg = GANConfig.tiny()
        G = TriPlaneGenerator(cfg)
        render(G.train())  # model code, even in training mode, builds nothing by itself
        save_snapshot("{snapshot}", G, cfg.to_dict())
        render(load_snapshot("{snapshot}").generator)
        print(json.dumps({{"loaded": [m for m in sys.modules if m.startswith("avatar3d_triplane")],
                           "cpp_extension": "torch.utils.cpp_extension" in sys.modules,
                           "tried": native._tried, "ops": native.training_ops() is not None}}))
    """, TORCH_EXTENSIONS_DIR=str(ext_dir))
    assert out == {"loaded": [], "cpp_extension": False, "tried": False, "ops": False}
    assert not ext_dir.exists()


def test_eval_render_is_the_same_bytes_with_and_without_the_compiled_ops(tmp_path):
    snapshot, producer_out, consumer_out = tmp_path / "g.safetensors", tmp_path / "p.pt", tmp_path / "c.pt"
    # The producer: a training process with the ops on saves a snapshot and renders it (sample grid, FID).
    prod = _run(f"""
        from avatar3d import native
        from avatar3d.gan.snapshot import load_snapshot, save_snapshot
        assert native.enable_training_ops("cpu"), "the compiled ops did not build"
        torch.manual_seed(0)
        cfg = GANConfig.tiny()
        save_snapshot("{snapshot}", TriPlaneGenerator(cfg), cfg.to_dict())
        G = load_snapshot("{snapshot}").generator
        torch.save({{"eval": render(G), "train": render(G.train())}}, "{producer_out}")
        print(json.dumps({{"ops": native.training_ops() is not None}}))
    """, AVATAR3D_NATIVE_OPS="1")
    assert prod == {"ops": True}
    # The consumer: a pyfunc / export-mesh process loads the snapshot and renders; no ops.
    cons = _run(f"""
        from avatar3d import native
        from avatar3d.gan.snapshot import load_snapshot
        G = load_snapshot("{snapshot}").generator
        torch.save({{"eval": render(G), "train": render(G.train())}}, "{consumer_out}")
        print(json.dumps({{"ops": native.training_ops() is not None}}))
    """)
    assert cons == {"ops": False}
    p, c = torch.load(producer_out), torch.load(consumer_out)
    assert torch.equal(p["eval"], c["eval"])
    # Training-mode renders did take the compiled path in the producer (other float rounding),
    # so the equality above is not vacuous.
    assert not torch.equal(p["train"], c["train"])
    torch.testing.assert_close(p["train"], c["train"], rtol=1e-3, atol=1e-3)


def test_nothing_is_built_for_a_gpu_worker_or_when_switched_off(monkeypatch):
    monkeypatch.setattr(native, "_tried", native._tried)
    before = native._tried
    assert native.enable_training_ops("cuda:0") is False
    monkeypatch.setenv("AVATAR3D_NATIVE_OPS", "0")
    assert native.enable_training_ops("cpu") is False and native.training_ops() is None
    assert native._tried == before


def test_runtime_does_not_import_native():
    """No import cycle: native reads runtime's env switch; runtime needs nothing from native."""
    proc = subprocess.run([sys.executable, "-c", "import sys, avatar3d.runtime; print('avatar3d.native' in sys.modules)"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
