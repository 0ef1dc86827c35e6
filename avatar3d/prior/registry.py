"""The trained prior in the model registry, as an MLflow pyfunc model (models-from-code).

    import mlflow, pandas as pd
    prior = mlflow.pyfunc.load_model("models:/avatar3d-prior@candidate")
    w = prior.predict(pd.DataFrame({"image": [png_bytes], "seed": [0]}))           # (N, w_dim) float32
    front = prior.predict(pd.DataFrame({"image": [png_bytes]}), params={"output": "front"})  # (N, H, W, 3) uint8

Columns: ``image`` (encoded PNG/JPEG bytes; base64 in a REST request),
optional ``seed`` (default: the row number) and ``guidance_scale`` (default:
the prior's). Param ``output``: "w" (default) or "front" (the generator's
front render of w). The model's one artifact is the prior folder (denoiser,
schedule, CLIP encoder, generator snapshot); it is logged, signed, pinned and
format-tagged (:data:`MODEL_FORMAT`) as :mod:`avatar3d.training.registry`
describes; a model registered before the tag existed is version 1.
"""
from __future__ import annotations

import io
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from PIL import Image

from avatar3d.prior.pipeline import ImageToAvatarPipeline
from avatar3d.training.registry import (GENERATOR_REQUIREMENTS, check_model_format, log_registered_model,
                                        param_schema)

MODEL_FORMAT = "avatar3d.prior-model/1"
UNTAGGED_MODEL_FORMAT = "avatar3d.prior-model/1"  # registered before the tag existed: today's layout


class PriorModel(mlflow.pyfunc.PythonModel):
    """Rows: ``image`` (encoded PNG/JPEG bytes), optional ``seed`` (default: the row number) and
    ``guidance_scale``. params ``output``: "w" (default) or "front" (the generator's front render of w)."""

    def load_context(self, context):
        check_model_format(context, MODEL_FORMAT, UNTAGGED_MODEL_FORMAT)
        self.pipe = ImageToAvatarPipeline.from_pretrained(context.artifacts["prior"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in df:
            raise ValueError("input: an 'image' column is required (PNG/JPEG bytes per row); "
                             "optional: seed, guidance_scale")
        output = {**PARAMS, **(params or {})}["output"]
        if output not in ("w", "front"):
            raise ValueError(f"params.output: {output!r} is not known; pass 'w' or 'front'")
        results = []
        for i, row in enumerate(df.itertuples(index=False)):
            if not isinstance(row.image, (bytes, bytearray)):
                raise ValueError(f"input: row {i}: image must be PNG/JPEG bytes, not {type(row.image).__name__}")
            image = Image.open(io.BytesIO(row.image))
            seed = _given(getattr(row, "seed", None), i)
            scale = _given(getattr(row, "guidance_scale", None), None)
            out = self.pipe(image, seed=int(seed), guidance_scale=None if scale is None else float(scale),
                            yaws=[0.0])
            results.append(out.w[0].numpy() if output == "w" else out.views[0, 0])
        return np.stack(results)


PARAMS = {"output": "w"}
# transformers' CLIPImageProcessor resizes through torchvision where it is installed and through PIL otherwise,
# which moves the embedding (and so w) by float rounding: the consumer gets the backend the pairs were built with.
PRIOR_REQUIREMENTS = [*GENERATOR_REQUIREMENTS, "diffusers", "transformers", "torchvision"]


def _given(value, default):
    """A row's optional value, or ``default`` where the row leaves it out (None / NaN)."""
    return default if value is None or pd.isna(value) else value


def _signature() -> ModelSignature:
    inputs = Schema([ColSpec("binary", "image"), ColSpec("long", "seed", required=False),
                     ColSpec("double", "guidance_scale", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, -1))])  # one w per row ("front": uint8 renders)
    return ModelSignature(inputs=inputs, outputs=outputs, params=param_schema(PARAMS))


def _example_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 96, 80)).save(buffer, format="PNG")
    return buffer.getvalue()


def register_prior(prior_folder: str | Path, name: str) -> str:
    """Log the prior folder as a pyfunc model in the active run and register it; returns ``name/version``."""
    example = pd.DataFrame({"image": [_example_png()], "seed": [0]})
    return log_registered_model("prior", Path(__file__).with_name("model_code.py"), {"prior": str(prior_folder)},
                                _signature(), example, PRIOR_REQUIREMENTS,
                                MODEL_FORMAT, name)
