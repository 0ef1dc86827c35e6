"""Character LoRAs in the MLflow model registry.

A registered LoRA is a pyfunc model whose artifact ``lora`` is the LoRA
folder written by ``lora-train`` (diffusers format + ``avatar3d_lora.json``
+ ``styles.yaml``). Two ways to use it:

* as a LoRA: ``avatar3d generate ... pipeline.lora=models:/<name>/<version>``
  (:func:`avatar3d.datagen.pipeline.resolve_lora` downloads the folder);
* as a model: ``mlflow.pyfunc.load_model("models:/<name>/1").predict(df)``
  paints text-to-image previews with the LoRA on its base model; columns
  ``seed`` (required), ``prompt`` (default: the training caption, which calls
  the character). Needs the base model where it runs (the tiny preset is
  built in; SD 1.5 from the recorded hub id or folder).
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from avatar3d.datagen.pipeline import LORA_WEIGHTS

PACKAGE_DIR = Path(__file__).resolve().parents[1]
META_FILE = "avatar3d_lora.json"


class LoraModel(mlflow.pyfunc.PythonModel):
    """Text-to-image with the character LoRA: one row per image (``seed``, optional ``prompt``)."""

    def load_context(self, context):
        self.lora_dir = Path(context.artifacts["lora"])
        self.meta = json.loads((self.lora_dir / META_FILE).read_text())
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            from avatar3d.lora.base import load_base_pipeline

            pipe = load_base_pipeline(self.meta["preset"], self.meta["base_model_source"])
            pipe.load_lora_weights(str(self.lora_dir), weight_name=LORA_WEIGHTS)
            self._pipe = pipe
        return self._pipe

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from avatar3d.lora.base import sample_images

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "seed" not in df:
            raise ValueError("input: a 'seed' column is required (one row per image); optional: prompt")
        params = params or {}
        prompts = [str(p) for p in df["prompt"]] if "prompt" in df else [self.meta["caption"]] * len(df)
        return np.stack(sample_images(
            self._pipeline(), prompts, [int(s) for s in df["seed"]],
            steps=int(params.get("steps", 25)), size=int(params.get("size", self.meta["resolution"])),
            guidance_scale=float(params.get("guidance_scale", 7.5)),
        ))


def register_lora(lora_dir: str | Path, name: str) -> str:
    """Log ``lora_dir`` as a pyfunc model in the active MLflow run and register it; returns ``name/version``."""
    lora_dir = Path(lora_dir)
    if not (lora_dir / LORA_WEIGHTS).is_file():
        raise ValueError(f"lora_dir={str(lora_dir)!r} holds no {LORA_WEIGHTS}: pass a folder written by lora-train")
    info = mlflow.pyfunc.log_model(
        name="lora",
        python_model=LoraModel(),
        artifacts={"lora": str(lora_dir)},
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=["torch", "diffusers", "transformers", "peft", "safetensors", "numpy", "pandas", "pyyaml"],
        registered_model_name=name,
    )
    return f"{name}/{info.registered_model_version}"
