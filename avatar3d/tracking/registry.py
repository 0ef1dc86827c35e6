"""The model registry: trained generators as MLflow pyfunc models.

A consumer needs nothing but MLflow and torch::

    import mlflow, pandas as pd
    G = mlflow.pyfunc.load_model("models:/avatar3d-gan/1")
    images = G.predict(pd.DataFrame({"seed": [0, 1], "yaw": [0.0, 90.0], "pitch": [0.0, 10.0]}))
    # -> uint8 array (2, H, W, 3)

The model carries the snapshot (safetensors) as an artifact and avatar3d's
own code (``code_paths``), so it loads in a fresh process without Ray or
DeepSpeed.
"""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parents[1]


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Renders avatars: one row per image, columns ``seed`` (required), ``yaw``, ``pitch`` (degrees, default 0),
    ``truncation_psi`` (default 0.7). The identity depends on the seed only; the camera on yaw/pitch."""

    def load_context(self, context):
        from avatar3d.training.checkpoint import load_snapshot

        self.snapshot = load_snapshot(context.artifacts["snapshot"])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from avatar3d.scene.cameras import camera_label
        from avatar3d.training.samples import to_uint8

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "seed" not in df:
            raise ValueError("input: a 'seed' column is required (one row per image); optional: yaw, pitch, "
                             "truncation_psi")
        G = self.snapshot.generator
        images = []
        with torch.no_grad():
            for _, row in df.iterrows():
                seed = int(row["seed"])
                yaw = float(row.get("yaw", 0.0))
                pitch = float(row.get("pitch", 0.0))
                psi = float(row.get("truncation_psi", 0.7))
                z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
                front = torch.tensor(camera_label(0.0, 0.0), dtype=torch.float32)[None]
                cam = torch.tensor(camera_label(yaw, pitch), dtype=torch.float32)[None]
                # The renderer jitters its ray samples: seed it too, so a row always gives the same image.
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    ws = G.mapping(z, front, truncation_psi=psi)
                    images.append(to_uint8(G.synthesis(ws, cam, noise_mode="const").image)[0])
        return np.stack(images)


def register_generator(snapshot: str | Path, name: str) -> str:
    """Log ``snapshot`` as a pyfunc model in the active run and register it; returns ``name/version``."""
    info = mlflow.pyfunc.log_model(
        name="generator",
        python_model=GeneratorModel(),
        artifacts={"snapshot": str(snapshot)},
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=["torch", "safetensors", "numpy", "pandas", "pyyaml"],
        registered_model_name=name,
    )
    return f"{name}/{info.registered_model_version}"
