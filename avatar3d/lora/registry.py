"""Character LoRAs in the MLflow model registry.

A registered LoRA is a pyfunc model whose artifact ``lora`` is the LoRA
folder written by ``lora-train`` (diffusers format + ``avatar3d_lora.json``
+ ``styles.yaml``). Two ways to use it:

* as a LoRA: ``avatar3d generate ... pipeline.lora=models:/<name>/<version>``
  (:func:`avatar3d.datagen.pipeline.resolve_lora` downloads the folder);
* as a model: ``mlflow.pyfunc.load_model("models:/<name>@candidate").predict(df)``
  paints text-to-image previews with the LoRA on its base model; columns
  ``seed`` (required), ``prompt`` (default: the training caption, which calls
  the character); params ``steps`` (25), ``size`` (default: the training
  resolution), ``guidance_scale`` (7.5). Needs the base model where it runs
  (the tiny preset is built in; SD 1.5 from the recorded hub id or folder).
  Logged, signed and pinned as :mod:`avatar3d.training.registry` describes.

``avatar3d_lora.json`` records :data:`LORA_FORMAT` (a file without it is
version 1, today's layout); the registered model records :data:`MODEL_FORMAT`
as in :mod:`avatar3d.training.registry`. Both are checked on load.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from avatar3d.datagen.config import LORA_WEIGHTS
from avatar3d.lora.base import load_base_pipeline, sample_images
from avatar3d.safeio import check_format
from avatar3d.training.registry import (GENERATOR_REQUIREMENTS, IMAGES_OUT, check_model_format,
                                        log_registered_model, param_schema)

META_FILE = "avatar3d_lora.json"
# The LoRA folder's layout and its metadata's keys (written by avatar3d.lora.train.save_lora).
LORA_FORMAT = "avatar3d.lora/1"
UNTAGGED_LORA_FORMAT = "avatar3d.lora/1"  # written before the tag existed: today's layout
MODEL_FORMAT = "avatar3d.lora-model/1"
UNTAGGED_MODEL_FORMAT = "avatar3d.lora-model/1"  # registered before the tag existed: today's layout


def read_lora_meta(lora_dir: str | Path) -> dict:
    """The format-checked ``avatar3d_lora.json`` of a LoRA folder."""
    path = Path(lora_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"lora: {lora_dir} holds no {META_FILE}; pass a folder written by lora-train")
    meta = json.loads(path.read_text())
    check_format(path, meta.get("format", UNTAGGED_LORA_FORMAT), LORA_FORMAT,
                 "load it with the avatar3d release that wrote it, or train the LoRA again with this one",
                 field="lora")
    return meta


class LoraModel(mlflow.pyfunc.PythonModel):
    """Text-to-image with the character LoRA: one row per image (``seed``, optional ``prompt``)."""

    def load_context(self, context):
        check_model_format(context, MODEL_FORMAT, UNTAGGED_MODEL_FORMAT)
        self.lora_dir = Path(context.artifacts["lora"])
        self.meta = read_lora_meta(self.lora_dir)
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            pipe = load_base_pipeline(self.meta["preset"], self.meta["base_model_source"])
            pipe.load_lora_weights(str(self.lora_dir), weight_name=LORA_WEIGHTS)
            self._pipe = pipe
        return self._pipe

    def predict(self, context, model_input: pd.DataFrame, params=None):
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "seed" not in df:
            raise ValueError("input: a 'seed' column is required (one row per image); optional: prompt")
        opts = check_params({**default_params(self.meta), **(params or {})})
        prompts = [str(p) for p in df["prompt"]] if "prompt" in df else [self.meta["caption"]] * len(df)
        return np.stack(sample_images(self._pipeline(), prompts, [int(s) for s in df["seed"]],
                                      steps=int(opts["steps"]), size=int(opts["size"]),
                                      guidance_scale=float(opts["guidance_scale"])))


def default_params(meta: dict) -> dict:
    return {"steps": 25, "size": int(meta["resolution"]), "guidance_scale": 7.5}


def check_params(opts: dict) -> dict:
    """The sampling params, checked (one line naming the param)."""
    if int(opts["steps"]) < 1:
        raise ValueError(f"params.steps: {opts['steps']} must be >= 1")
    if int(opts["size"]) < 8 or int(opts["size"]) % 8:
        raise ValueError(f"params.size: {opts['size']} must be a multiple of 8 (the VAE's factor), e.g. 512")
    if float(opts["guidance_scale"]) < 0:
        raise ValueError(f"params.guidance_scale: {opts['guidance_scale']} must be >= 0 (1 = no guidance)")
    return opts


def lora_requirements(meta: dict) -> list[str]:
    """What painting with the LoRA imports; the built-in tiny base model's tokenizer reads CLIP's BPE merges
    from the openai-clip package (a real base model brings its own tokenizer files)."""
    tiny = ["openai-clip"] if meta["preset"] == "tiny" else []
    return [*GENERATOR_REQUIREMENTS, "diffusers", "transformers", "peft", *tiny]


def register_lora(lora_dir: str | Path, name: str) -> str:
    """Log ``lora_dir`` as a pyfunc model in the active MLflow run and register it; returns ``name/version``."""
    lora_dir = Path(lora_dir)
    if not (lora_dir / LORA_WEIGHTS).is_file():
        raise ValueError(f"lora_dir={str(lora_dir)!r} holds no {LORA_WEIGHTS}: pass a folder written by lora-train")
    meta = read_lora_meta(lora_dir)
    signature = ModelSignature(inputs=Schema([ColSpec("long", "seed"), ColSpec("string", "prompt", required=False)]),
                               outputs=IMAGES_OUT, params=param_schema(default_params(meta)))
    example = (pd.DataFrame({"seed": [0]}), {"steps": 1})  # MLflow serves it once at registration: keep it cheap
    return log_registered_model("lora", Path(__file__).with_name("model_code.py"), {"lora": str(lora_dir)},
                                signature, example, lora_requirements(meta), MODEL_FORMAT, name)
