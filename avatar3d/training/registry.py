"""The model registry: trained generators as MLflow pyfunc models (models-from-code).

A consumer needs MLflow and the packages the model declares
(``mlflow.pyfunc.get_model_dependencies(uri)``), nothing else::

    import mlflow, pandas as pd
    G = mlflow.pyfunc.load_model("models:/avatar3d-gan@candidate")
    images = G.predict(pd.DataFrame({"seed": [0, 1], "yaw": [0.0, 90.0], "pitch": [0.0, 10.0]}))
    # -> uint8 array (2, H, W, 3)
    out = G.predict(pd.DataFrame({"seed": [0]}), params={"mesh": True})
    # -> {"images": uint8 (1, H, W, 3), "meshes": [GLB bytes]}

Input columns (the signature declares them): ``seed`` (required; the
identity), ``yaw`` / ``pitch`` (degrees, default 0) or ``camera`` (a 25-float
EG3D label, overrides yaw/pitch), ``truncation_psi`` (default 0.7). Params:
``mesh`` (bool), ``mesh_resolution`` (grid size, default 128), ``iso``
(raw-density level, default 10 as EG3D), ``mesh_format`` (glb / ply / obj);
a mesh option without ``mesh=True`` is refused, not ignored.

How every registered model (generator, prior, LoRA) is logged, by
:func:`log_registered_model`:

- models-from-code: MLflow runs a small model file (``model_code.py`` beside
  each registry module) that builds the model object; nothing is pickled;
- avatar3d's own code travels with the model (``code_paths``), so it loads in
  a fresh process without this checkout, Ray or DeepSpeed;
- a full signature (inputs, params with defaults, outputs), an input example
  (MLflow checks at registration that the model serves it), and pip
  requirements pinned to the versions of the environment that trained it;
- the layout (the artifacts, the columns and params) is a format,
  :data:`MODEL_FORMAT` here, recorded in an artifact of its own
  (``avatar3d_format``: ``avatar3d_model.json``, which ``load_context`` checks)
  and in the MLmodel's ``metadata``. A model registered before the tag
  existed is version 1.
"""
from __future__ import annotations

import importlib.metadata
import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from avatar3d.evaluation.mesh import generator_mesh, mesh_bytes
from avatar3d.gan.samples import to_uint8
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.safeio import check_format
from avatar3d.scene.cameras import camera_label

# What a consumer installs beside MLflow (the model carries avatar3d's code, which imports these when it loads:
# meshes through PyMCubes + trimesh, renders through pillow), pinned at registration to the versions installed
# where the model was trained. The prior and the LoRA models add theirs.
GENERATOR_REQUIREMENTS = ["torch", "safetensors", "numpy", "pandas", "pyyaml", "pillow", "PyMCubes", "trimesh"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
FORMAT_KEY = "avatar3d_format"  # the artifact that records a registered model's format, and its metadata key
FORMAT_FILE = "avatar3d_model.json"
MODEL_FORMAT = "avatar3d.gan-model/1"
UNTAGGED_MODEL_FORMAT = "avatar3d.gan-model/1"  # registered before the tag existed: today's layout


MESH_PARAMS = {"mesh": False, "mesh_resolution": 128, "iso": 10.0, "mesh_format": "glb"}
MESH_FORMATS = ("glb", "ply", "obj")
MESH_RESOLUTIONS = (16, 1024)


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Renders avatars: one row per image (columns in the module docstring); optionally a mesh per row.
    The identity depends on the seed (and truncation) only; the camera on yaw/pitch or ``camera``."""

    def load_context(self, context):
        check_model_format(context, MODEL_FORMAT, UNTAGGED_MODEL_FORMAT)
        self.snapshot = load_snapshot(context.artifacts["snapshot"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "seed" not in df:
            raise ValueError("input: a 'seed' column is required (one row per image); optional: yaw, pitch, "
                             "camera (25-float EG3D label), truncation_psi")
        if "image" in df:
            raise ValueError("input: image-conditioned generation needs the W-space prior, which this model "
                             "does not carry; pass seeds")
        opts = _mesh_options(params)
        G = self.snapshot.generator
        images, meshes, mesh_cache = [], [], {}
        with torch.no_grad():
            for _, row in df.iterrows():
                seed = int(row["seed"])
                psi = float(row.get("truncation_psi", 0.7))
                given = row["camera"] if "camera" in df else None
                if isinstance(given, (list, tuple, np.ndarray)):  # rows without one (None / NaN) use yaw, pitch
                    label = np.asarray(given, dtype=np.float64)
                    if label.shape != (25,):
                        raise ValueError(f"input: camera must hold 25 floats (EG3D label), got shape {label.shape}")
                else:
                    label = camera_label(float(row.get("yaw", 0.0)), float(row.get("pitch", 0.0)))
                z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
                front = torch.tensor(camera_label(0.0, 0.0), dtype=torch.float32)[None]
                cam = torch.tensor(label, dtype=torch.float32)[None]
                # The renderer jitters its ray samples: seed it too, so a row always gives the same image.
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    ws = G.mapping(z, front, truncation_psi=psi)
                    images.append(to_uint8(G.synthesis(ws, cam, noise_mode="const").image)[0])
                if opts["mesh"]:
                    key = (seed, psi)
                    if key not in mesh_cache:
                        mesh_cache[key] = _mesh_bytes(G, ws, opts)
                    meshes.append(mesh_cache[key])
        images = np.stack(images)
        return {"images": images, "meshes": meshes} if opts["mesh"] else images


def _mesh_options(params) -> dict:
    """The mesh params, checked: a mesh option without ``mesh=True`` is refused (it would change nothing)."""
    opts = {**MESH_PARAMS, **(params or {})}
    unknown = sorted(set(opts) - set(MESH_PARAMS))
    if unknown:
        raise ValueError(f"params: {', '.join(unknown)} not known; pass {', '.join(MESH_PARAMS)}")
    if not opts["mesh"]:
        given = [k for k in ("mesh_resolution", "iso", "mesh_format") if opts[k] != MESH_PARAMS[k]]
        if given:
            raise ValueError(f"params.{given[0]}: takes effect only with mesh=True; pass mesh=True as well")
    if opts["mesh_format"] not in MESH_FORMATS:
        raise ValueError(f"params.mesh_format: {opts['mesh_format']!r} is not known; pass one of "
                         f"{', '.join(MESH_FORMATS)}")
    low, high = MESH_RESOLUTIONS
    if not low <= int(opts["mesh_resolution"]) <= high:
        raise ValueError(f"params.mesh_resolution: {opts['mesh_resolution']} is out of range; pass {low}..{high}")
    return opts


def _mesh_bytes(G, ws, opts) -> bytes:
    mesh = generator_mesh(G, ws, resolution=int(opts["mesh_resolution"]), iso=float(opts["iso"]))
    return mesh_bytes(mesh, str(opts["mesh_format"]))


def param_schema(defaults: dict) -> ParamSchema:
    """Params with their defaults, typed by the defaults (MLflow passes on only params a signature names)."""
    types = {bool: "boolean", int: "long", float: "double", str: "string"}
    return ParamSchema([ParamSpec(k, types[type(v)], v) for k, v in defaults.items()])


IMAGES_OUT = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])  # N renders, H x W x RGB


def _signature() -> ModelSignature:
    inputs = Schema([ColSpec("long", "seed"), ColSpec("double", "yaw", required=False),
                     ColSpec("double", "pitch", required=False),
                     ColSpec(Array("double"), "camera", required=False),
                     ColSpec("double", "truncation_psi", required=False)])
    return ModelSignature(inputs=inputs, outputs=IMAGES_OUT, params=param_schema(MESH_PARAMS))


def format_artifact(folder: str | Path, fmt: str) -> dict[str, str]:
    """Write the file that records a registered model's format into ``folder``; -> the ``artifacts=`` entry."""
    path = Path(folder) / FORMAT_FILE
    path.write_text(json.dumps({"format": fmt}))
    return {FORMAT_KEY: str(path)}


def check_model_format(context, known: str, untagged: str) -> None:
    """Refuse a registered model whose format artifact records a format other than ``known`` (one line)."""
    path = context.artifacts.get(FORMAT_KEY)
    found = json.loads(Path(path).read_text()).get("format") if path else untagged  # none: registered before
    where = path or next(iter(context.artifacts.values()), "this model")
    check_format(where, found, known, "load it in a fresh process (mlflow.pyfunc.load_model then uses the "
                 "avatar3d code the model carries) or register it again with this avatar3d", field="model")


def pinned_requirements(names: list[str]) -> list[str]:
    """Each distribution pinned to the version installed here, i.e. where the model was trained."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def log_registered_model(name: str, model_code: Path, artifacts: dict[str, str], signature: ModelSignature,
                         input_example, requirements: list[str], fmt: str, registered_name: str) -> str:
    """Log a pyfunc model from ``model_code`` in the active run and register it; -> ``name/version``."""
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts={**artifacts, **format_artifact(tmp, fmt)},
            signature=signature,
            input_example=input_example,
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=pinned_requirements(requirements),
            metadata={FORMAT_KEY: fmt},
            registered_model_name=registered_name,
        )
    return f"{registered_name}/{info.registered_model_version}"


def register_generator(snapshot: str | Path, name: str) -> str:
    """Log ``snapshot`` as a pyfunc model in the active run and register it; returns ``name/version``."""
    example = pd.DataFrame({"seed": [0, 0], "yaw": [0.0, 90.0], "pitch": [0.0, 10.0]})
    return log_registered_model("generator", Path(__file__).with_name("model_code.py"),
                                {"snapshot": str(snapshot)}, _signature(), example, GENERATOR_REQUIREMENTS,
                                MODEL_FORMAT, name)
