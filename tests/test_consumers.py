"""The three registered models as their consumers meet them: by alias, in an environment that holds only what each
model declares (no checkout of avatar3d), over REST, and (slow) in a fresh venv installed from the declared
requirements alone. Each produces the same bytes as the producer's own process for the same inputs."""
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from avatar3d.tracking.options import TrackingOptions
from avatar3d.tracking.tracker import Tracker
from avatar3d.training.registry import register_generator
from avatar3d.prior.registry import register_prior
from avatar3d.lora.registry import register_lora
from tests import REPO
from tests.evaluation.helpers import micro_generator, surface_iso, write_micro_snapshot

FORMATS = REPO / "tests" / "fixtures" / "formats"
# One request per model: the columns (and params) a consumer sends, in the order the producer answers them.
GAN_ROWS = {"seed": [0, 0, 3], "yaw": [0.0, 90.0, 180.0], "pitch": [0.0, 10.0, 0.0]}
LORA_ROWS, LORA_PARAMS = {"seed": [1]}, {"steps": 2}
# What README.md and docs/registry.md say each model declares (besides mlflow).
GAN_PACKAGES = {"torch", "safetensors", "numpy", "pandas", "pyyaml", "pillow", "pymcubes", "trimesh"}
DECLARED = {"gan": GAN_PACKAGES, "prior": GAN_PACKAGES | {"diffusers", "transformers", "torchvision"},
            "lora": GAN_PACKAGES | {"diffusers", "transformers", "peft", "openai-clip"}}


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


PRIOR_ROWS = {"image": [_png((200, 120, 90)), _png((30, 60, 200))], "seed": [4, 5]}


def _tiny_lora(folder: Path) -> Path:
    """A LoRA folder on the tiny base model, its B matrices nudged off zero so that it changes the images."""
    import torch

    from avatar3d.lora.base import load_base_pipeline
    from avatar3d.lora.train import add_lora, save_lora

    meta = json.loads((FORMATS / "lora" / "avatar3d_lora.json").read_text())
    meta.pop("format")
    pipe = load_base_pipeline(meta["preset"], meta["base_model_source"])
    torch.manual_seed(0)
    add_lora(pipe.unet, meta["rank"], meta["alpha"], meta["target_modules"])
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return save_lora(folder, pipe.unet, None, meta, meta["caption"], "grn")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The GAN, the prior and a LoRA registered through the stages' own Tracker, which sets the alias."""
    root = tmp_path_factory.mktemp("consumers")
    uri = f"sqlite:///{root}/mlflow.db"
    lora = _tiny_lora(root / "lora")
    tracker = Tracker(TrackingOptions(tracking_uri=uri, experiment="consumers"), root, "consumers", stage="test")
    with tracker:
        versions = {"gan": tracker.register(register_generator, write_micro_snapshot(root / "g.safetensors"),
                                            default="c-gan"),
                    "prior": tracker.register(register_prior, FORMATS / "prior", default="c-prior"),
                    "lora": tracker.register(register_lora, lora, default="c-lora")}
    assert versions == {"gan": "c-gan/1", "prior": "c-prior/1", "lora": "c-lora/1"}
    return {"root": root, "uri": uri}


def _uri(kind):
    return f"models:/c-{kind}@candidate"


def _producer(store, kind, rows, params=None):
    """What the producer's own process (this venv, the checkout importable) answers, on one thread as the
    consumers below (another thread count sums the encoder's matmuls in another order)."""
    import torch

    threads = torch.get_num_threads()
    mlflow.set_tracking_uri(store["uri"])
    torch.set_num_threads(1)
    try:
        return mlflow.pyfunc.load_model(_uri(kind)).predict(pd.DataFrame(rows), params=params)
    finally:
        torch.set_num_threads(threads)
        mlflow.set_tracking_uri("")


def _declared(store, kind) -> list[str]:
    mlflow.set_tracking_uri(store["uri"])
    try:
        path = mlflow.pyfunc.get_model_dependencies(_uri(kind))
    finally:
        mlflow.set_tracking_uri("")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


# -- an environment of the declared packages only ---------------------------------------------------------

def _closure(requirements: list[str]) -> set:
    """The installed distributions a consumer of ``requirements`` gets: them and, recursively, what they require
    (markers evaluated here, extras only where asked)."""
    import importlib.metadata as md

    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
            continue
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # an optional platform package this venv has no use for
            continue
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(Requirement(str(sub).split(";")[0]))
    return {name for name, _ in seen}


def _site_of(names: set, folder: Path) -> Path:
    """A site folder holding links to exactly the files of the distributions ``names`` (and their metadata)."""
    import importlib.metadata as md

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if not (folder / top).exists() and (base / top).exists():
                (folder / top).symlink_to(base / top)
    return folder


CONSUMER = """
import json, sys
sys.path.append({site!r})
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model({model!r})
rows = json.loads({rows!r})
if "image" in rows:
    import base64
    rows["image"] = [base64.b64decode(x) for x in rows["image"]]
out = model.predict(pd.DataFrame(rows), params=json.loads({params!r}) or None)
np.save({out!r}, out)
import avatar3d
print("AVATAR3D", avatar3d.__file__)
"""


def _jsonable(rows):
    return {k: [base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in vals] for k, vals in rows.items()}


@pytest.mark.parametrize("kind,rows,params", [("gan", GAN_ROWS, None), ("prior", PRIOR_ROWS, None),
                                              ("lora", LORA_ROWS, LORA_PARAMS)])
def test_a_model_serves_from_its_declared_packages_alone_without_the_checkout(store, tmp_path, kind, rows, params):
    declared = _declared(store, kind)
    assert all("==" in line for line in declared), declared  # pinned to the producer's versions
    assert {canonicalize_name(r.split("==")[0]) for r in declared} == DECLARED[kind] | {"mlflow"}
    site = _site_of(_closure(declared), tmp_path / "site")
    assert not (site / "avatar3d").exists() and not (site / "ray").exists() and not (site / "deepspeed").exists()
    code = CONSUMER.format(site=str(site), uri=store["uri"], model=_uri(kind), rows=json.dumps(_jsonable(rows)),
                           params=json.dumps(params), out=str(tmp_path / "out.npy"))
    # -I: no current folder, no PYTHON* variables, no user site; -S: not this venv's site-packages either.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AVATAR3D_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    shipped = Path(done.stdout.split("AVATAR3D ")[1].strip())
    assert REPO not in shipped.parents  # the model's own copy of the code
    expected = _producer(store, kind, rows, params)
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


def test_each_documented_param_changes_the_output_or_is_refused(store):
    iso = surface_iso(micro_generator())  # a level the untrained micro generator's field crosses
    base = _producer(store, "gan", {"seed": [0]}, {"mesh": True, "mesh_resolution": 32, "iso": iso})
    assert set(base) == {"images", "meshes"} and base["meshes"][0][:4] == b"glTF"
    finer = _producer(store, "gan", {"seed": [0]}, {"mesh": True, "mesh_resolution": 48, "iso": iso})
    assert len(finer["meshes"][0]) != len(base["meshes"][0])
    higher = _producer(store, "gan", {"seed": [0]}, {"mesh": True, "mesh_resolution": 32, "iso": iso * 1.01})
    assert higher["meshes"][0] != base["meshes"][0]
    ply = _producer(store, "gan", {"seed": [0]}, {"mesh": True, "mesh_resolution": 32, "iso": iso,
                                                  "mesh_format": "ply"})
    assert ply["meshes"][0][:3] == b"ply"
    for params, message in (({"mesh_resolution": 64}, "params.mesh_resolution: takes effect only with mesh=True"),
                            ({"mesh": True, "mesh_format": "stl"}, "params.mesh_format: 'stl' is not known"),
                            ({"mesh": True, "mesh_resolution": 4}, "params.mesh_resolution: 4 is out of range")):
        with pytest.raises(Exception, match=message):
            _producer(store, "gan", {"seed": [0]}, params)
    # The prior: output=front renders the w that output=w returns; guidance_scale and seed change w.
    w = _producer(store, "prior", PRIOR_ROWS)
    front = _producer(store, "prior", PRIOR_ROWS, {"output": "front"})
    assert w.dtype == np.float32 and w.ndim == 2 and front.dtype == np.uint8 and front.shape[-1] == 3
    assert not np.array_equal(w, _producer(store, "prior", {**PRIOR_ROWS, "guidance_scale": [0.0, 0.0]}))
    assert not np.array_equal(w, _producer(store, "prior", {**PRIOR_ROWS, "seed": [7, 8]}))
    with pytest.raises(Exception, match="params.output: 'mesh' is not known"):
        _producer(store, "prior", PRIOR_ROWS, {"output": "mesh"})
    # The LoRA: steps, size and guidance_scale each change the images.
    first = _producer(store, "lora", LORA_ROWS, LORA_PARAMS)
    assert first.shape == (1, 32, 32, 3)
    assert _producer(store, "lora", LORA_ROWS, {"steps": 2, "size": 48}).shape == (1, 48, 48, 3)
    assert not np.array_equal(first, _producer(store, "lora", LORA_ROWS, {"steps": 3}))
    assert not np.array_equal(first, _producer(store, "lora", LORA_ROWS, {"steps": 2, "guidance_scale": 1.0}))
    with pytest.raises(Exception, match="params.size: 30 must be a multiple of 8"):
        _producer(store, "lora", LORA_ROWS, {"size": 30})


# -- REST ---------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(store, kind, tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "AVATAR3D_CACHE_DIR": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # MLflow execs uvicorn
    log = open(tmp_path / f"serve-{kind}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", _uri(kind), "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"], stdout=log, stderr=log,
                            env=env, cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    proc.kill()
    raise AssertionError((tmp_path / f"serve-{kind}.log").read_text()[-3000:])


def _post(port, body) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("kind,rows,params", [("gan", GAN_ROWS, None), ("prior", PRIOR_ROWS, {"output": "w"}),
                                              ("lora", LORA_ROWS, LORA_PARAMS)])
def test_mlflow_models_serve_answers_the_documented_rest_request(store, tmp_path, kind, rows, params):
    """docs/registry.md's request format: dataframe_split, binary columns as base64, params beside."""
    proc, port = _serve(store, kind, tmp_path)
    try:
        body = {"dataframe_split": {"columns": list(rows), "data": [list(r) for r in zip(*_jsonable(rows).values())]}}
        if params:
            body["params"] = params
        answer = np.asarray(_post(port, body)["predictions"])
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
    expected = _producer(store, kind, rows, params)
    if expected.dtype == np.uint8:
        assert np.array_equal(answer.astype(np.uint8), expected) and answer.shape == expected.shape
    else:
        np.testing.assert_allclose(answer, expected, rtol=1e-6, atol=1e-7)  # JSON's decimal round trip


# -- slow: a fresh venv from the declared requirements -------------------------------------------------------

@pytest.mark.slow
def test_a_fresh_venv_with_only_the_declared_requirements_serves_each_model(store, tmp_path):
    """pip installs exactly what each model declares (the prior's set holds the GAN's, the LoRA's the prior's, so
    one venv grows model by model), then loads it by alias and answers with the producer's bytes."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    for kind, rows, params in (("gan", GAN_ROWS, None), ("prior", PRIOR_ROWS, None),
                               ("lora", LORA_ROWS, LORA_PARAMS)):
        reqs = tmp_path / f"{kind}-requirements.txt"
        reqs.write_text("\n".join(_declared(store, kind)) + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(reqs)], check=True, timeout=1200)
        code = CONSUMER.format(site=str(tmp_path / "nothing"), uri=store["uri"], model=_uri(kind),
                               rows=json.dumps(_jsonable(rows)), params=json.dumps(params),
                               out=str(tmp_path / f"{kind}.npy"))
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AVATAR3D_CACHE_DIR": str(tmp_path / "cache"),
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert np.array_equal(np.load(tmp_path / f"{kind}.npy"), _producer(store, kind, rows, params)), kind
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    print(f"consumer venv: {len(freeze.splitlines())} packages, "
          f"{sum(f.stat().st_size for f in venv.rglob('*') if f.is_file()) / 2**30:.1f} GiB")
    names = {canonicalize_name(line.split("==")[0]) for line in freeze.splitlines()}
    assert not names & {"avatar3d", "ray", "deepspeed"}, names
    shutil.rmtree(venv)
