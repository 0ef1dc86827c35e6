"""Bad input through the CLI's entry point: the one-line promise, for every command (issue #15).

Every row gives ``avatar3d.cli.main`` one bad input and holds the command to the promise of
``avatar3d/cli/__init__.py``:

1. exit status 2 (``main`` returns 2, or argparse's ``SystemExit(2)``);
2. exactly one line on stderr, ``avatar3d <command>: error: ...``, naming the offending input
   (the flag or option, or the path);
3. nothing created, changed or removed: the row's folder (fixtures copied in, the output folder
   pointed inside, the current folder) is the same before and after, file by file (bytes + mtime);
4. fast: under :data:`CASE_LIMIT_S`.

A few rows are of the opposite kind ("accept"): a good value that must not be refused.

How a row that is wrongly *accepted* is kept from doing the work: the places where a command
starts its real work (a Ray start, a GAN render, a LoRA base model, a prior sampling) are
replaced for the row by a guard that raises :class:`ReachedWork`, so the row fails at once with
"accepted" instead of training for an hour. The rows of absurd sizes run in a child process under
a hard time limit (``signal.alarm``) and an address-space limit, so one that runs away is killed,
not the test session.

Rows that break the promise today are strict xfails whose reason says what happens now; when the
code is fixed the row XPASSes, fails the run, and the mark is removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from string import Template

import pytest

REPO = Path(__file__).resolve().parents[1]
FORMATS = REPO / "tests" / "fixtures" / "formats"
CONFIGS = REPO / "jobs" / "configs"

CASE_LIMIT_S = 10.0  # promise 4: a refusal is quick
CHILD_LIMIT_S = 20  # hard limit of a child row's main() (SIGALRM kills it)
CHILD_IMPORT_ALLOWANCE_S = 90  # the child's imports (torch, Ray, ...) on 2 busy cores, before the clock starts
CHILD_EXTRA_AS = 4 << 30  # address space a child row may add after its imports


class ReachedWork(BaseException):
    """A guarded stage was reached: the input was accepted and the work began.

    A BaseException, so no ``except Exception`` on the way (the CLI's, a Tracker's) swallows it."""


# Where the commands start real work; each is replaced by a guard for every row.
# (module, attribute): a module function / attribute, or "module:Class" for a method.
GUARDS = [
    ("ray", "init"),  # generate, train-gan, train-prior, build-prior-pairs, run-pipeline
    ("avatar3d.evaluation.stage", "compute_fid"),
    ("avatar3d.evaluation.stage", "compute_truth"),
    ("avatar3d.evaluation.stage", "write_walk"),
    ("avatar3d.evaluation.stage", "write_turntable"),
    ("avatar3d.evaluation.stage", "write_mesh"),
    ("avatar3d.lora.train", "load_base_pipeline"),
    ("avatar3d.prior.pipeline:ImageToAvatarPipeline", "__call__"),
]

# Imported once before the first row, so that no row's clock counts the first import of torch, Ray, MLflow.
WARM = ["avatar3d.cli", "avatar3d.cli.evaluation", "avatar3d.cli.prior", "avatar3d.cli.lora", "ray", "mlflow",
        "avatar3d.datagen.job", "avatar3d.training.job", "avatar3d.prior.job", "avatar3d.prior.pairs",
        "avatar3d.prior.avatar", "avatar3d.chain", "avatar3d.evaluation.stage", "avatar3d.lora.train",
        "avatar3d.scene.guidance", "avatar3d.prompts"]


def _guard(label: str):
    def reached(*args, **kwargs):
        raise ReachedWork(label)

    return reached


def _guard_targets(loaded_only: bool = False):
    """(owner, attribute, label) of every guard; ``loaded_only``: only of modules imported already (a child
    row imports what its command needs, and a command that never imports a module never reaches its work)."""
    for module, attr in GUARDS:
        name, _, cls = module.partition(":")
        if loaded_only and name not in sys.modules:
            continue
        owner = importlib.import_module(name)
        if cls:
            owner = getattr(owner, cls)
        yield owner, attr, f"{module}.{attr}"


# -- the rows -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    argv: list[str]  # ${name} placeholders: see _workspace
    names: tuple[str, ...] = ()  # the error line must contain one of these (placeholders allowed)
    kind: str = "refuse"  # or "accept": exit 0, not refused
    child: bool = False  # run in a child process under hard limits (absurd sizes)
    warm: tuple[str, ...] = ()  # modules the child imports before its clock starts
    prep: str = ""  # extra preparation: a key of PREPS
    stdout_has: str = ""  # accept rows: stdout must contain this
    no_store: bool = False  # also check that no mlflow.db / mlruns appeared anywhere under the row's folder

    @property
    def command(self) -> str:
        return next(a for a in self.argv if not a.startswith("-"))


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


def row(id_, argv, names=(), marks=(), **kw):
    return pytest.param(Row(argv=argv.split() if isinstance(argv, str) else argv, names=tuple(names), **kw),
                        id=id_, marks=marks)


TRAIN_GAN = "train-gan --config ${cfg}/train_gan_tiny.yaml data.path=${data} output_dir=${out}"
TRAIN_PRIOR = "train-prior --config ${cfg}/prior_train_tiny.yaml pairs=${pairs} output_dir=${out} batch_size=4"
PAIRS = "build-prior-pairs --config ${cfg}/prior_pairs_tiny.yaml output_dir=${out} num_pairs=4"
GENERATE = "generate --config ${cfg}/generate_tiny.yaml output_dir=${out}"
MESH_OUT = "--out ${out}/avatar.glb"
LORA = "lora-train --config ${cfg}/lora_tiny.yaml --images ${images} --token <mychar> output_dir=${out}"
PIPELINE = ("run-pipeline generate_config=${cfg}/generate_tiny.yaml train_config=${cfg}/train_gan_tiny.yaml "
            "evaluate_config=${cfg}/evaluate_tiny.yaml prior_pairs_config=${cfg}/prior_pairs_tiny.yaml "
            "prior_train_config=${cfg}/prior_train_tiny.yaml")
I2A = "image-to-avatar ${image} --out ${out}"
NO_STORE_URI = "sqlite:///${case}/nonexistent/dir/db.sqlite"

ROWS = [
    # ---- export-mesh: snapshots that are not snapshots, paths of the wrong kind
    row("export-mesh/model-garbage", f"export-mesh --model ${{garbage}} {MESH_OUT}", ["--model", "${garbage}"]),
    row("export-mesh/model-truncated", f"export-mesh --model ${{truncated}} {MESH_OUT}", ["--model", "${truncated}"]),
    row("export-mesh/model-text", f"export-mesh --model ${{text}} {MESH_OUT}", ["--model", "${text}"]),
    row("export-mesh/model-pickle", f"export-mesh --model ${{pickle}} {MESH_OUT}", ["--model", "${pickle}"]),
    row("export-mesh/model-missing", f"export-mesh --model ${{ws}}/nope.safetensors {MESH_OUT}",
        ["--model", "${ws}/nope.safetensors"]),
    row("export-mesh/model-is-a-folder", f"export-mesh --model ${{emptydir}} {MESH_OUT}", ["--model", "${emptydir}"]),
    row("export-mesh/model-unreadable", f"export-mesh --model ${{locked}} {MESH_OUT}", ["--model", "${locked}"],
        prep="locked"),
    row("export-mesh/out-existing-folder", "export-mesh --model ${snap} --out ${ws}/meshes/avatar.glb",
        ["--out", "${ws}/meshes/avatar.glb"], prep="glb_folder"),
    row("export-mesh/out-earlier-mesh", "export-mesh --model ${snap} --out ${ws}/old/avatar.glb",
        ["--overwrite"], prep="earlier_outputs"),
    row("export-mesh/preview-earlier", "export-mesh --model ${snap} --out ${ws}/old/new.glb --preview ${ws}/old/p.png",
        ["--preview", "--overwrite"], prep="earlier_outputs"),
    row("walk/out-holds-an-earlier-walk", "walk --model ${snap} --out ${ws}/old --formats gif", ["--overwrite"],
        prep="earlier_outputs"),
    row("turntable/out-holds-an-earlier-turntable", "turntable --model ${snap} --out ${ws}/old --formats mp4",
        ["--overwrite"], prep="earlier_outputs"),
    row("fid/out-earlier-result", "fid --model ${snap} --data ${data} --out ${ws}/old/fid.json", ["--overwrite"],
        prep="earlier_outputs"),
    row("export-mesh/out-bad-suffix", "export-mesh --model ${snap} --out ${out}/avatar.stl", ["--out"]),
    row("export-mesh/resolution-huge", f"export-mesh --model ${{snap}} {MESH_OUT} --resolution 100000",
        ["--resolution"]),
    row("export-mesh/seed-negative", f"export-mesh --model ${{snap}} {MESH_OUT} --seed -1", ["--seed"]),
    row("export-mesh/models-uri-no-store", f"export-mesh --model models:/x/1 {MESH_OUT}", ["--model", "models:/x/1"],
        no_store=True),
    row("export-mesh/models-uri-mistyped-store",
        f"export-mesh --model models:/x/1 --tracking-uri {NO_STORE_URI} {MESH_OUT}",
        ["--tracking-uri", "models:/x/1", "${case}/nonexistent"], no_store=True),

    # ---- train-gan
    row("train-gan/transfer-garbage", TRAIN_GAN + " transfer=${garbage}", ["transfer", "${garbage}"]),
    row("train-gan/transfer-truncated", TRAIN_GAN + " transfer=${truncated}", ["transfer", "${truncated}"]),
    row("train-gan/transfer-pickle", TRAIN_GAN + " transfer=${pickle}", ["transfer", "${pickle}"]),
    row("train-gan/transfer-flag-text", TRAIN_GAN + " --transfer ${text}", ["--transfer", "transfer", "${text}"]),
    row("train-gan/tracking-uri-bogus", TRAIN_GAN + " tracking.tracking_uri=bogus::uri", ["tracking.tracking_uri"]),
    row("train-gan/run-name-quote", TRAIN_GAN + " run_name=o'brien", ["run_name"]),
    row("train-gan/run-name-dotdot", TRAIN_GAN + " run_name=..", ["run_name"]),
    row("train-gan/output-dir-empty", TRAIN_GAN + " output_dir=", ["output_dir"]),
    row("train-gan/lr-g-negative", TRAIN_GAN.split() + ["model.overrides={lr_g: -1}"], ["lr_g"]),
    row("train-gan/seed-negative", TRAIN_GAN + " seed=-1", ["seed"]),
    row("train-gan/data-missing", "train-gan --config ${cfg}/train_gan_tiny.yaml data.path=${ws}/nope "
        "output_dir=${out}", ["data.path", "${ws}/nope"]),
    row("train-gan/data-is-a-file", "train-gan --config ${cfg}/train_gan_tiny.yaml data.path=${notes} "
        "output_dir=${out}", ["data.path", "${notes}"]),
    row("train-gan/resume-not-a-checkpoint", TRAIN_GAN + " --resume ${emptydir}", ["resume", "${emptydir}"]),
    row("train-gan/config-empty-yaml", "train-gan --config ${empty_yaml} output_dir=${out}",
        ["data.path", "${empty_yaml}"]),
    row("train-gan/config-yaml-list", "train-gan --config ${list_yaml}", ["${list_yaml}"]),
    row("train-gan/config-unreadable", "train-gan --config ${locked_yaml}", ["${locked_yaml}"], prep="locked_yaml"),
    row("train-gan/config-bad-yaml", "train-gan --config ${bad_yaml}", ["${bad_yaml}"]),
    row("train-gan/config-is-a-folder", "train-gan --config ${emptydir}", ["${emptydir}"]),
    row("train-gan/unknown-option", TRAIN_GAN + " batch_sise=4", ["batch_sise"]),
    row("train-gan/wrong-type", TRAIN_GAN + " total_kimg=lots", ["total_kimg"]),
    row("train-gan/lr-g-1e-4-accepted", TRAIN_GAN.split() + ["model.overrides={lr_g: 1e-4}", "--print-config"],
        kind="accept", stdout_has='"lr_g"'),

    # ---- generate
    row("generate/tracking-uri-bogus", GENERATE + " tracking.tracking_uri=bogus::uri", ["tracking.tracking_uri"]),
    row("generate/output-dir-empty", "generate --config ${cfg}/generate_tiny.yaml output_dir=", ["output_dir"]),
    row("generate/output-dir-is-a-file", "generate --config ${cfg}/generate_tiny.yaml output_dir=${notes}",
        ["output_dir", "${notes}"]),
    row("generate/seed-negative", GENERATE + " seed=-1", ["seed"]),
    row("generate/shard-writer-unknown", GENERATE + " shard_writer=nodes", ["shard_writer", "driver", "workers"]),
    row("generate/styles-file-is-a-folder", GENERATE + " styles_file=${emptydir}", ["styles_file", "${emptydir}"]),
    row("generate/lora-models-uri-no-store", GENERATE + " pipeline.lora=models:/x/1",
        ["pipeline.lora", "models:/x/1"], no_store=True),
    row("generate/num-samples-absurd", GENERATE + " num_samples=1000000000000", ["num_samples"], child=True,
        warm=("avatar3d.datagen.job",)),

    # ---- train-prior
    # lr=0 is accepted with a warning (a frozen-network control run, as evaluation/gan/bench_world.py does).
    row("train-prior/output-dir-file-uri", TRAIN_PRIOR.replace("output_dir=${out}", "output_dir=file://${out}"),
        ["output_dir", "file://"]),
    row("train-prior/output-dir-s3-without-tracking-store", TRAIN_PRIOR.replace("output_dir=${out}",
                                                                              "output_dir=s3://bucket/p"),
        ["output_dir", "tracking.tracking_uri"]),
    row("train-prior/lr-negative", TRAIN_PRIOR + " lr=-0.001", ["lr"]),
    row("train-prior/run-name-dotdot", TRAIN_PRIOR + " run_name=..", ["run_name"]),
    row("train-prior/output-dir-empty", TRAIN_PRIOR + " output_dir=", ["output_dir"]),
    row("train-prior/tracking-uri-bogus", TRAIN_PRIOR + " tracking.tracking_uri=bogus::uri",
        ["tracking.tracking_uri"]),
    row("train-prior/pairs-missing", "train-prior --config ${cfg}/prior_train_tiny.yaml pairs=${ws}/nope "
        "output_dir=${out}", ["pairs", "${ws}/nope"]),
    row("train-prior/pairs-is-a-file", "train-prior --config ${cfg}/prior_train_tiny.yaml pairs=${notes} "
        "output_dir=${out}", ["pairs", "${notes}"]),
    row("train-prior/resume-not-a-checkpoint", TRAIN_PRIOR + " --resume ${emptydir}", ["resume", "${emptydir}"]),
    row("train-prior/lr-1e-4-accepted", TRAIN_PRIOR + " lr=1e-4 --print-config", kind="accept",
        stdout_has='"lr": 0.0001'),

    # ---- build-prior-pairs
    row("build-prior-pairs/output-dir-unknown-scheme", PAIRS.replace("output_dir=${out}", "output_dir=ftp://h/p")
        + " snapshot=${snap}", ["output_dir", "ftp://h/p"]),
    row("build-prior-pairs/snapshot-garbage", PAIRS + " snapshot=${garbage}", ["snapshot", "${garbage}"]),
    row("build-prior-pairs/snapshot-text", PAIRS + " snapshot=${text}", ["snapshot", "${text}"]),
    row("build-prior-pairs/snapshot-pickle", PAIRS + " snapshot=${pickle}", ["snapshot", "${pickle}"]),
    row("build-prior-pairs/snapshot-missing", PAIRS + " snapshot=${ws}/nope.safetensors",
        ["snapshot", "${ws}/nope.safetensors"]),
    row("build-prior-pairs/output-dir-empty", PAIRS + " snapshot=${snap} output_dir=", ["output_dir"]),

    # ---- fid
    row("fid/model-garbage", "fid --model ${garbage} --data ${data}", ["--model", "${garbage}"]),
    row("fid/model-truncated", "fid --model ${truncated} --data ${data}", ["--model", "${truncated}"]),
    row("fid/seed-negative", "fid --model ${snap} --data ${data} --seed -1", ["--seed"]),
    row("fid/data-is-a-file", "fid --model ${snap} --data ${notes}", ["--data", "${notes}"]),
    row("fid/out-is-a-folder", "fid --model ${snap} --data ${data} --out ${emptydir}", ["--out", "${emptydir}"]),
    row("fid/models-uri-bogus-store", "fid --model models:/x/1 --data ${data} --tracking-uri bogus::uri",
        ["--tracking-uri", "bogus::uri"], no_store=True),
    row("fid/models-uri-mistyped-store", f"fid --model models:/x/1 --data ${{data}} --tracking-uri {NO_STORE_URI}",
        ["--tracking-uri", "models:/x/1", "${case}/nonexistent"], no_store=True),
    row("fid/num-fakes-absurd", "fid --model ${snap} --data ${data} --num-fakes 1000000000000", ["--num-fakes"],
        child=True, warm=("avatar3d.cli.evaluation", "avatar3d.evaluation.stage")),

    # ---- walk / turntable / truth-metrics
    row("walk/model-garbage", "walk --model ${garbage} --out ${out}", ["--model", "${garbage}"]),
    row("walk/model-pickle", "walk --model ${pickle} --out ${out}", ["--model", "${pickle}"]),
    row("walk/seeds-not-numbers", "walk --model ${snap} --out ${out} --seeds 0,x", ["--seeds"]),
    row("walk/out-is-a-file", "walk --model ${snap} --out ${notes}", ["--out", "${notes}"]),
    row("turntable/model-missing", "turntable --model ${ws}/nope.safetensors --out ${out}",
        ["--model", "${ws}/nope.safetensors"]),
    row("turntable/seed-negative", "turntable --model ${snap} --out ${out} --seed -1", ["--seed"]),
    row("turntable/formats-unknown", "turntable --model ${snap} --out ${out} --formats avi", ["--formats"]),
    row("truth-metrics/model-garbage", "truth-metrics --model ${garbage} --data ${data}", ["--model", "${garbage}"]),
    row("truth-metrics/data-missing", "truth-metrics --model ${snap} --data ${ws}/nope", ["--data", "${ws}/nope"]),

    # ---- guidance / prompts
    row("guidance/views-absurd", "guidance --views 1000000000000 --size 16 --out ${out}", ["--views"], child=True,
        warm=("avatar3d.scene.guidance",)),
    row("guidance/mesh-missing", "guidance --out ${out} --mesh ${ws}/nope.obj --landmarks ${ws}/nope.json",
        ["--mesh", "${ws}/nope.obj"]),
    row("guidance/out-is-a-file", "guidance --views 1 --size 16 --out ${notes}", ["--out", "${notes}"]),
    row("prompts/n-absurd", "prompts --n 1000000000000", ["--n"], child=True, warm=("avatar3d.prompts",)),
    row("prompts/seed-negative", "prompts --n 2 --seed -1", ["--seed"]),
    row("prompts/styles-missing", "prompts --styles ${ws}/nope.yaml", ["--styles", "${ws}/nope.yaml"]),
    row("prompts/styles-empty-yaml", "prompts --styles ${empty_yaml}", ["--styles", "${empty_yaml}"]),
    row("prompts/styles-is-a-folder", "prompts --styles ${emptydir}", ["--styles", "${emptydir}"]),

    # ---- run-pipeline
    row("run-pipeline/output-dir-is-a-file", PIPELINE + " output_dir=${notes}", ["output_dir", "${notes}"]),
    row("run-pipeline/output-dir-on-an-object-store", PIPELINE + " output_dir=s3://bucket/demo",
        ["output_dir", "s3://bucket/demo"]),
    row("run-pipeline/from-stage-unknown", PIPELINE + " output_dir=${out} from_stage=nope", ["from_stage"]),
    row("run-pipeline/stage-config-missing", PIPELINE + " output_dir=${out} generate_config=${ws}/nope.yaml",
        ["generate_config", "${ws}/nope.yaml"]),
    row("run-pipeline/output-dir-empty", PIPELINE + " output_dir= stages=[generate]", ["output_dir"]),
    row("run-pipeline/config-yaml-list", "run-pipeline --config ${list_yaml}", ["${list_yaml}"]),
    row("run-pipeline/train-override-unknown", PIPELINE + " output_dir=${out} train_overrides=[batch_sise=4]",
        ["batch_sise"]),

    # ---- image-to-avatar
    row("image-to-avatar/image-missing", "image-to-avatar ${ws}/nope.png --out ${out} --prior ${prior}",
        ["IMAGE", "image", "${ws}/nope.png"]),
    row("image-to-avatar/image-not-an-image", "image-to-avatar ${notes} --out ${out} --prior ${prior}",
        ["IMAGE", "image", "${notes}"]),
    row("image-to-avatar/prior-is-empty-folder", I2A + " --prior ${emptydir}", ["--prior", "${emptydir}"]),
    row("image-to-avatar/prior-models-uri-no-store", I2A + " --prior models:/x/1", ["--prior", "models:/x/1"],
        no_store=True),
    row("image-to-avatar/generator-garbage", I2A + " --prior ${prior} --generator ${garbage}",
        ["--generator", "${garbage}"]),
    row("image-to-avatar/image-1x1", "image-to-avatar ${ws}/tiny/img0.png --out ${out} --prior ${prior}",
        ["${ws}/tiny/img0.png", "16x16"], prep="tiny_images"),
    row("image-to-avatar/out-holds-an-earlier-avatar", "image-to-avatar ${image} --out ${ws}/old --prior ${prior}",
        ["--overwrite"], prep="earlier_outputs"),
    row("image-to-avatar/seed-negative", I2A + " --prior ${prior} --seed -1", ["--seed"]),

    # ---- lora-train
    row("lora-train/images-missing", "lora-train --config ${cfg}/lora_tiny.yaml --images ${ws}/nope --token t "
        "output_dir=${out}", ["--images", "images", "${ws}/nope"]),
    row("lora-train/images-is-a-file", "lora-train --config ${cfg}/lora_tiny.yaml --images ${notes} --token t "
        "output_dir=${out}", ["--images", "images", "${notes}"]),
    row("lora-train/config-bad-yaml", "lora-train --config ${bad_yaml} --images ${images} --token t",
        ["${bad_yaml}"]),
    row("lora-train/images-1x1", "lora-train --config ${cfg}/lora_tiny.yaml --images ${ws}/tiny --token <mychar> "
        "output_dir=${out}", ["images", "img0.png", "16x16"], prep="tiny_images"),
    row("lora-train/learning-rate-zero", LORA + " learning_rate=0", ["learning_rate"]),
    row("lora-train/learning-rate-1e-4-accepted", LORA + " learning_rate=1e-4 --print-config", kind="accept",
        stdout_has='"learning_rate": 0.0001'),
]


# -- the workspace of a row ----------------------------------------------------------------------------


def _png(path: Path, size: int = 32, shade: int = 128) -> Path:
    from PIL import Image

    Image.new("RGB", (size, size), (shade, 255 - shade, 64)).save(path)
    return path


def _workspace(case: Path) -> dict[str, str]:
    """Fixtures copied into ``case/ws`` plus bad files of every kind -> the placeholders of the rows."""
    ws = case / "ws"
    ws.mkdir(parents=True)
    snap = shutil.copy(FORMATS / "gan_snapshot.safetensors", ws / "snap.safetensors")
    shutil.copytree(FORMATS / "dataset_v2", ws / "data")
    shutil.copytree(FORMATS / "prior", ws / "prior")
    shutil.copytree(FORMATS / "prior_pairs", ws / "pairs")
    card = json.loads((ws / "pairs" / "pairs.json").read_text())
    card["snapshot"] = str(snap)  # the fixture's card names the repository's copy, relative to the repository
    (ws / "pairs" / "pairs.json").write_text(json.dumps(card, indent=2))
    data = Path(snap).read_bytes()
    (ws / "garbage.safetensors").write_bytes(bytes(range(256)) * 8)
    (ws / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (ws / "text.safetensors").write_text("this is a text file, not a snapshot\n")
    (ws / "snapshot.pkl").write_bytes(pickle.dumps({"G_ema": [0.0] * 16, "kimg": 1.0}))
    (ws / "notes.txt").write_text("a plain file\n")
    (ws / "emptydir").mkdir()
    (ws / "empty.yaml").write_text("")
    (ws / "list.yaml").write_text("- a\n- b\n")
    (ws / "bad.yaml").write_text("batch_size: [1, 2\n")
    _png(ws / "face.png")
    (ws / "images").mkdir()
    for i in range(6):
        _png(ws / "images" / f"img{i}.png", shade=40 * i)
    names = dict(case=case, ws=ws, out=case / "out", snap=snap, data=ws / "data", pairs=ws / "pairs",
                 prior=ws / "prior", garbage=ws / "garbage.safetensors", truncated=ws / "truncated.safetensors",
                 text=ws / "text.safetensors", pickle=ws / "snapshot.pkl", notes=ws / "notes.txt",
                 emptydir=ws / "emptydir", empty_yaml=ws / "empty.yaml", list_yaml=ws / "list.yaml",
                 bad_yaml=ws / "bad.yaml", image=ws / "face.png", images=ws / "images", cfg=CONFIGS,
                 locked=ws / "locked.safetensors", locked_yaml=ws / "locked.yaml")
    return {k: str(v) for k, v in names.items()}


def _unreadable(source: str, target: str) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file: the unreadable-file case cannot be made")
    shutil.copy(source, target)
    os.chmod(target, 0)


def _prep_locked(names):
    _unreadable(names["snap"], names["locked"])


def _prep_locked_yaml(names):
    _unreadable(CONFIGS / "train_gan_tiny.yaml", names["locked_yaml"])


def _prep_glb_folder(names):
    (Path(names["ws"]) / "meshes" / "avatar.glb").mkdir(parents=True)  # an existing folder with a mesh's name


def _prep_earlier_outputs(names):
    old = Path(names["ws"]) / "old"  # what an earlier walk / turntable / export-mesh / fid left
    old.mkdir()
    for name in ("avatar.glb", "p.png", "walk.gif", "turntable_grid.png", "fid.json", "avatar.json"):
        (old / name).write_bytes(b"an earlier result " + name.encode())


def _prep_tiny_images(names):
    (Path(names["ws"]) / "tiny").mkdir()
    for i in range(6):  # enough images, each 1x1: nothing a LoRA or the prior could learn from
        _png(Path(names["ws"]) / "tiny" / f"img{i}.png", size=1, shade=40 * i)


PREPS = {"tiny_images": _prep_tiny_images, "locked": _prep_locked, "locked_yaml": _prep_locked_yaml, "glb_folder": _prep_glb_folder,
         "earlier_outputs": _prep_earlier_outputs}


def _fill(text: str, names: dict[str, str]) -> str:
    return Template(text).substitute(names)


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` -> ("dir",) or ("file", sha256, size, mtime_ns) (or ("link", target))."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            state[rel] = ("dir",)
        else:
            st = path.stat()
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                digest = "unreadable"
            state[rel] = ("file", digest, st.st_size, st.st_mtime_ns)
    return state


def tree_changes(before: dict, after: dict) -> list[str]:
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    out = []
    for label, items in (("created", created), ("removed", removed), ("changed", changed)):
        if items:
            shown = items[:8] + ([f"... {len(items) - 8} more"] if len(items) > 8 else [])
            out.append(f"{label}: {', '.join(shown)}")
    return out


def _repo_top() -> set[str]:
    return set(os.listdir(REPO))


# -- running a row --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    elapsed: float
    error: str = ""  # what escaped main(): "accepted: ..." or "<Type> in <where>: <message>"


def describe_exception(exc: BaseException) -> str:
    if isinstance(exc, ReachedWork):
        return f"accepted: the work began ({exc.args[0]} reached)"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/avatar3d/" in f.filename]

    def where(frame):
        path = Path(frame.filename)
        parts = path.parts
        short = "/".join(parts[parts.index("avatar3d"):]) if "avatar3d" in parts else "/".join(parts[-2:])
        return f"{short}:{frame.name}"

    place = where(frames[-1]) if frames else "?"
    if ours and ours[-1] is not frames[-1]:
        place += f" (from {where(ours[-1])})"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__module__}.{type(exc).__qualname__} in {place}: {message}"


def run_in_process(argv: list[str], capfd) -> Outcome:
    from avatar3d.cli import main

    capfd.readouterr()
    error, code = "", None
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback is what the row reports
        error = describe_exception(exc)
    except ReachedWork as exc:
        error = describe_exception(exc)
    elapsed = time.perf_counter() - t0
    captured = capfd.readouterr()
    return Outcome(code, captured.out, captured.err, elapsed, error)


def _child_main() -> None:
    """Entry of a child row (``python -c``): warm imports, guards, limits, then the clock and main()."""
    import resource

    spec = json.loads(os.environ["AVATAR3D_BAD_INPUT_ROW"])
    for name in spec["warm"]:
        importlib.import_module(name)
    from avatar3d.cli import main

    for owner, attr, label in _guard_targets(loaded_only=True):
        setattr(owner, attr, _guard(label))
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + CHILD_EXTRA_AS, hard))  # soft limit: lifted again below
    signal.alarm(CHILD_LIMIT_S)  # default action: the process ends, whatever it is doing
    result = {"code": None, "error": ""}
    t0 = time.perf_counter()
    try:
        result["code"] = main(spec["argv"])
    except SystemExit as exc:
        result["code"] = exc.code
    except BaseException as exc:  # noqa: BLE001 - MemoryError included
        result["error"] = describe_exception(exc)
    result["elapsed"] = time.perf_counter() - t0
    signal.alarm(0)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    sys.stdout.flush()
    sys.stderr.flush()
    Path(spec["result"]).write_text(json.dumps(result))
    os._exit(0)


def run_in_child(argv: list[str], warm: tuple[str, ...], cwd: Path, result: Path) -> Outcome:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AVATAR3D_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["AVATAR3D_BAD_INPUT_ROW"] = json.dumps({"argv": argv, "warm": list(warm), "result": str(result)})
    proc = subprocess.Popen([sys.executable, "-c", "from tests.test_bad_inputs import _child_main; _child_main()"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHILD_LIMIT_S + CHILD_IMPORT_ALLOWANCE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    if result.is_file():
        data = json.loads(result.read_text())
        return Outcome(data["code"], out, err, data["elapsed"], data["error"])
    how = (f"killed by signal {-proc.returncode}" if proc.returncode and proc.returncode < 0
           else f"exit {proc.returncode}")
    what = "ran away: " + how + (f" (the {CHILD_LIMIT_S} s limit)" if proc.returncode == -signal.SIGALRM else "")
    tail = err.strip().splitlines()[-1:] if err.strip() else []
    return Outcome(None, out[-2000:], err[-4000:], float(CHILD_LIMIT_S), what + (f"; last stderr: {tail[0]}"
                                                                                    if tail else ""))


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_imports():
    for name in WARM:
        importlib.import_module(name)


@pytest.fixture
def isolated(monkeypatch, warm_imports):
    """No tracking store or debug switch from outside; MLflow's process-wide state put back after the row."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "AVATAR3D_DEBUG",
                 "AVATAR3D_CACHE_DIR", "AVATAR3D_LOG_LEVEL"):
        monkeypatch.setenv(name, "x")  # recorded, so that teardown removes what a row sets
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    for owner, attr, label in _guard_targets():
        monkeypatch.setattr(owner, attr, _guard(label))
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


# -- the test -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ROWS)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case: Row, tmp_path, monkeypatch, capfd, isolated):
    root = tmp_path / "case"  # the row's whole world: cwd, fixtures, outputs
    names = _workspace(root)
    if case.prep:
        PREPS[case.prep](names)
    argv = [_fill(a, names) for a in case.argv]
    expected = [_fill(n, names) for n in case.names]
    monkeypatch.chdir(root)
    before, repo_before = tree_state(root), _repo_top()

    if case.child:
        got = run_in_child(argv, case.warm, root, tmp_path / "child_result.json")
    else:
        got = run_in_process(argv, capfd)

    print(f"exit {got.code}; {got.elapsed:.2f} s; {got.error or 'no exception'}\nstderr:\n{got.err}")
    changes = tree_changes(before, tree_state(root))
    new_in_repo = sorted(_repo_top() - repo_before)
    err_lines = got.err.splitlines()
    problems = []
    if got.error:
        problems.append(got.error)
    if case.kind == "accept":
        if got.code != 0:
            problems.append(f"exit {got.code}, expected 0")
        if "expected a number" in got.err:
            problems.append("refused a good number: " + got.err.strip().splitlines()[-1])
        if case.stdout_has and case.stdout_has not in got.out:
            problems.append(f"stdout lacks {case.stdout_has!r}")
    else:
        if got.code != 2:
            problems.append(f"exit {got.code}, expected 2")
        prefix = f"avatar3d {case.command}: error: "
        if len(err_lines) != 1:
            problems.append(f"{len(err_lines)} lines on stderr, expected 1")
        line = next((ln for ln in err_lines if ln.startswith(prefix)), err_lines[-1] if err_lines else "")
        if not line.startswith(prefix):
            problems.append(f"no line starts {prefix!r}")
        elif expected and not any(n in line for n in expected):
            problems.append(f"the error line names none of {expected}")
        problems += [f"files {c}" for c in changes]
    if new_in_repo:
        problems.append(f"new in the repository root: {new_in_repo}")
    if case.no_store:
        stores = [p for p in ("mlflow.db", "mlruns") if list(root.rglob(p))]
        stores += ["nonexistent/dir"] if (root / "nonexistent").exists() else []
        if stores:
            problems.append(f"created a tracking store: {stores}")
    if got.elapsed >= CASE_LIMIT_S:
        problems.append(f"took {got.elapsed:.1f} s (limit {CASE_LIMIT_S:.0f} s)")
    shown_err = "\n".join(err_lines[-6:])
    assert not problems, (f"avatar3d {' '.join(argv)}\n  " + "\n  ".join(problems)
                          + f"\n  stderr (last lines):\n{shown_err}")
