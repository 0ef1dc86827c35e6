"""Registry consumption: a registered generator resolves for every command and serves renders and meshes
through ``mlflow.pyfunc.load_model`` in a fresh process."""
import subprocess
import sys
import textwrap

import mlflow
import pytest
import torch

from avatar3d.evaluation.models import load_generator, resolve_snapshot
from avatar3d.tracking.tracker import use_experiment
from avatar3d.training.registry import register_generator
from tests.evaluation.helpers import micro_generator, surface_iso, write_micro_snapshot

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    snap = write_micro_snapshot(root / "g.safetensors")
    uri = f"sqlite:///{root}/mlflow.db"
    use_experiment(uri, "eval-test")  # artifacts beside the store, not in ./mlruns of the checkout
    with mlflow.start_run():
        version = register_generator(snap, "micro-gan")
    mlflow.set_tracking_uri("")  # leave no global state behind for other tests
    return {"root": root, "snapshot": snap, "uri": uri, "version": version}


def test_models_uri_resolves_to_the_same_weights_and_is_cached(registered, tmp_path):
    assert registered["version"] == "micro-gan/1"
    path = resolve_snapshot("models:/micro-gan/1", registered["uri"], cache_dir=tmp_path)
    assert path.suffix == ".safetensors" and tmp_path in path.parents
    assert path.read_bytes() == registered["snapshot"].read_bytes()
    assert resolve_snapshot("models:/micro-gan/1", registered["uri"], cache_dir=tmp_path) == path  # reused
    G = load_generator(str(path)).generator
    ref = micro_generator()
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(G.state_dict()[name], value, rtol=0, atol=0)


def test_an_alias_is_resolved_to_its_version_before_the_cache(registered, tmp_path):
    """Moving @champion to a new version serves the new weights at once: the cache is keyed by version."""
    client = mlflow.MlflowClient(tracking_uri=registered["uri"], registry_uri=registered["uri"])
    client.set_registered_model_alias("micro-gan", "champion", "1")
    first = resolve_snapshot("models:/micro-gan@champion", registered["uri"], cache_dir=tmp_path)
    assert first.read_bytes() == registered["snapshot"].read_bytes()
    # A second version with other weights; the alias moves to it.
    snap2 = write_micro_snapshot(tmp_path / "v2.safetensors", seed=1)
    use_experiment(registered["uri"], "eval-test")
    with mlflow.start_run():
        assert register_generator(snap2, "micro-gan") == "micro-gan/2"
    mlflow.set_tracking_uri("")
    client.set_registered_model_alias("micro-gan", "champion", "2")
    second = resolve_snapshot("models:/micro-gan@champion", registered["uri"], cache_dir=tmp_path)
    assert second != first and second.read_bytes() == snap2.read_bytes()
    assert resolve_snapshot("models:/micro-gan/latest", registered["uri"], cache_dir=tmp_path) == second
    assert resolve_snapshot("models:/micro-gan/1", registered["uri"], cache_dir=tmp_path) == first


def test_bad_model_references_fail_with_one_clear_line(registered, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="no tracking store"):
        resolve_snapshot("models:/micro-gan/1")
    with pytest.raises(ValueError, match="cannot fetch models:/micro-gan/7"):
        resolve_snapshot("models:/micro-gan/7", registered["uri"], cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_snapshot(tmp_path / "missing.safetensors")


def test_pyfunc_serves_renders_cameras_and_meshes_from_a_fresh_process(registered):
    iso = surface_iso(micro_generator())
    code = textwrap.dedent(f"""
        import io
        import mlflow, numpy as np, pandas as pd, trimesh
        from avatar3d.scene.cameras import camera_label
        mlflow.set_tracking_uri({registered['uri']!r})
        model = mlflow.pyfunc.load_model("models:/micro-gan/1")
        imgs = model.predict(pd.DataFrame({{"seed": [0, 0, 1], "yaw": [30.0, 30.0, 0.0], "pitch": [5.0, 5.0, 0.0]}}))
        assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8, imgs.shape
        assert (imgs[0] == imgs[1]).all() and not (imgs[0] == imgs[2]).all()
        # A camera label gives the same image as the yaw/pitch it encodes.
        by_label = model.predict(pd.DataFrame({{"seed": [0], "camera": [camera_label(30.0, 5.0).tolist()]}}))
        assert (by_label[0] == imgs[0]).all()
        out = model.predict(pd.DataFrame({{"seed": [0, 0]}}),
                            params={{"mesh": True, "mesh_resolution": 20, "iso": {iso!r}}})
        assert out["images"].shape == (2, 32, 32, 3) and len(out["meshes"]) == 2
        mesh = trimesh.load(io.BytesIO(out["meshes"][0]), file_type="glb", force="mesh")
        assert mesh.is_watertight and mesh.volume > 0 and len(mesh.visual.vertex_colors) == len(mesh.vertices)
        print("OK", len(mesh.faces))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=registered["root"])
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


def test_pyfunc_rows_mix_labels_and_angles_and_reject_bad_labels(registered):
    import pandas as pd

    from avatar3d.scene.cameras import camera_label
    from avatar3d.training.registry import GeneratorModel
    from avatar3d.gan.snapshot import load_snapshot

    model = GeneratorModel()
    model.snapshot = load_snapshot(registered["snapshot"])
    images = model.predict(None, pd.DataFrame({"seed": [0, 0, 0], "yaw": [30.0, 30.0, 0.0],
                                               "camera": [camera_label(30.0, 0.0).tolist(), None, None]}))
    assert (images[0] == images[1]).all() and not (images[0] == images[2]).all()
    with pytest.raises(ValueError, match="camera must hold 25 floats"):
        model.predict(None, pd.DataFrame({"seed": [0], "camera": [[1.0, 2.0]]}))
    with pytest.raises(ValueError, match="W-space prior"):
        model.predict(None, pd.DataFrame({"seed": [0], "image": [b""]}))


def test_reading_a_model_from_a_mistyped_sqlite_store_creates_nothing(tmp_path, monkeypatch):
    from avatar3d.tracking.models import resolve_model_uri

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo" / "mlflow.db"
    with pytest.raises(ValueError, match=r"--model: no MLflow store at sqlite:///.*typo/mlflow.db \(no such file\)"):
        resolve_model_uri("models:/avatar3d-gan/1", f"sqlite:///{missing}", field="--model")
    assert list(tmp_path.iterdir()) == []
