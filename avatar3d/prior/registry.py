"""The trained prior in the model registry, as an MLflow pyfunc model.

    import mlflow, pandas as pd
    prior = mlflow.pyfunc.load_model("models:/avatar3d-prior/1")
    w = prior.predict(pd.DataFrame({"image": [png_bytes], "seed": [0]}))           # (N, w_dim) float32
    front = prior.predict(pd.DataFrame({"image": [png_bytes]}), params={"output": "front"})  # (N, H, W, 3) uint8

The model's one artifact is the prior folder (denoiser, schedule, CLIP
encoder, generator snapshot); avatar3d's code travels with it
(``code_paths``), so it loads in a fresh process without Ray or DeepSpeed.
Its layout (the ``prior`` artifact, the columns and params above) is
:data:`MODEL_FORMAT`, recorded and checked as in
:mod:`avatar3d.training.registry`; a model registered before the tag existed
is version 1.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec
from PIL import Image

from avatar3d.prior.pipeline import ImageToAvatarPipeline
from avatar3d.training.registry import FORMAT_KEY, GENERATOR_REQUIREMENTS, check_model_format, format_artifact

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODEL_FORMAT = "avatar3d.prior-model/1"
UNTAGGED_MODEL_FORMAT = "avatar3d.prior-model/1"  # registered before the tag existed: today's layout


class PriorModel(mlflow.pyfunc.PythonModel):
    """Rows: ``image`` (encoded PNG/JPEG bytes or a file path), optional ``seed`` (default: the row number),
    ``guidance_scale``. params ``output``: "w" (default) or "front" (the generator's front render of w)."""

    def load_context(self, context):
        check_model_format(context, MODEL_FORMAT, UNTAGGED_MODEL_FORMAT)
        self.pipe = ImageToAvatarPipeline.from_pretrained(context.artifacts["prior"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in df:
            raise ValueError("input: an 'image' column is required (PNG/JPEG bytes or a file path per row); "
                             "optional: seed, guidance_scale")
        output = (params or {}).get("output", "w")
        if output not in ("w", "front"):
            raise ValueError(f"params.output: {output!r} is not known; pass 'w' or 'front'")
        results = []
        for i, row in enumerate(df.itertuples(index=False)):
            data = row.image
            image = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data))
            seed = int(getattr(row, "seed", i))
            scale = getattr(row, "guidance_scale", None)
            out = self.pipe(image, seed=seed, guidance_scale=None if scale is None else float(scale),
                            yaws=[0.0])
            results.append(out.w[0].numpy() if output == "w" else out.views[0, 0])
        return np.stack(results)


def _signature():
    """Declares the ``output`` param: MLflow passes only params that the signature names."""

    return ModelSignature(params=ParamSchema([ParamSpec("output", "string", "w")]))


def register_prior(prior_folder: str | Path, name: str) -> str:
    """Log the prior folder as a pyfunc model in the active run and register it; returns ``name/version``."""
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name="prior",
            python_model=PriorModel(),
            artifacts={"prior": str(prior_folder), **format_artifact(tmp, MODEL_FORMAT)},
            signature=_signature(),
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=[*GENERATOR_REQUIREMENTS, "diffusers", "transformers"],
            metadata={FORMAT_KEY: MODEL_FORMAT},
            registered_model_name=name,
        )
    return f"{name}/{info.registered_model_version}"
