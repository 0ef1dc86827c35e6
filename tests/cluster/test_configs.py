"""The cluster files parse, pass a schema check, agree with the job configs, and name only things that exist.

- cluster/cluster.yaml is checked against Ray's own launcher schema
  (ray/autoscaler/ray-schema.json, the check `ray up` runs), raw and after
  Ray fills in its AWS defaults.
- KubeRay manifests: the RayCluster / RayJob CRD schemas are not available
  offline, so a small structural check stands in for them (apiVersion, kind,
  the fields KubeRay requires, autoscaling from zero, GPU requests); each
  RayJob's runtimeEnvYAML goes through Ray's own RuntimeEnv validation.
- Every command the files and docs/cluster.md name is real: `python jobs/X.py`
  files exist and their `--config` + key=value overrides load; `avatar3d <cmd>`
  is a subcommand of the CLI; `ray <cmd> --flag` is a command and option of
  the installed Ray CLI; repository paths in file mounts and the Dockerfile exist.
- The node groups fit the jobs: the paper configs' actors and training
  workers fit the GPU node types, and training cannot land on generation nodes.
"""
from __future__ import annotations

import copy
import logging
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.cluster import yaml_strings

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "cluster.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
DOCS = REPO / "docs" / "cluster.md"
YAML_FILES = [LAUNCHER, RUNTIME_ENV, RAYCLUSTER, RAYJOB]

# Entry points whose config dataclass is known: their overrides are loaded for real.
JOB_CONFIGS = {
    "jobs/generate_dataset.py": ("avatar3d.datagen.job", "GenerateConfig"),
    "jobs/train_gan.py": ("avatar3d.training.config", "TrainGANConfig"),
    "jobs/run_pipeline.py": ("avatar3d.chain", "ChainConfig"),
    "jobs/build_prior_pairs.py": ("avatar3d.prior.config", "BuildPairsConfig"),
    "jobs/train_prior.py": ("avatar3d.prior.config", "TrainPriorConfig"),
}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_every_yaml_parses_to_mappings(path):
    docs = load_all(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs)


# --------------------------------------------------------------------------- launcher


def test_launcher_config_passes_rays_schema_raw_and_with_defaults():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(LAUNCHER)
    validate_config(config)
    filled = prepare_config(copy.deepcopy(config))  # merges ray/autoscaler/aws/defaults.yaml
    validate_config(filled)
    assert filled["head_node_type"] == "head"
    assert set(filled["available_node_types"]) == {"head", "gpu_gen", "gpu_train"}


def test_schema_check_rejects_a_broken_launcher_config():
    """The schema check is live: a typo'd node-type key and a fractional resource fail it."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = load(LAUNCHER)
    typo = copy.deepcopy(config)
    typo["available_node_types"]["gpu_gen"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(typo)
    fractional = copy.deepcopy(config)
    fractional["available_node_types"]["gpu_gen"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fractional)


def test_launcher_groups_autoscale_from_zero_with_cpu_head_and_spot_generation():
    config = load(LAUNCHER)
    types = config["available_node_types"]
    assert types["head"]["resources"].get("CPU") == 0 and not types["head"]["resources"].get("GPU")
    for name in ("gpu_gen", "gpu_train"):
        assert types[name]["min_workers"] == 0, name
        assert types[name]["resources"]["GPU"] >= 1, name
    assert sum(types[n]["max_workers"] for n in ("gpu_gen", "gpu_train")) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0
    assert types["gpu_gen"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    starts = " ".join(config["head_start_ray_commands"])
    assert "RAY_enable_autoscaler_v2=1" in starts and "--head" in starts
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in starts


def _job_config(module: str, cls: str, path: str | None, overrides=()):
    import importlib

    from avatar3d.config import load_config

    config_cls = getattr(importlib.import_module(module), cls)
    return load_config(config_cls, str(REPO / path) if path else None, list(overrides))


def _fits(group: dict, need: dict[str, float]) -> bool:
    return all(group.get(k, 0) >= v for k, v in need.items())


def test_node_groups_fit_the_paper_jobs():
    """Generation and prior-pair actors fit gpu_gen; the 8-worker GAN run fits one gpu_train node, and not gpu_gen."""
    gen = _job_config(*JOB_CONFIGS["jobs/generate_dataset.py"], "jobs/configs/generate_sd15.yaml")
    train = _job_config(*JOB_CONFIGS["jobs/train_gan.py"], "jobs/configs/train_gan_paper.yaml")
    launcher = load(LAUNCHER)["available_node_types"]
    kuberay = {g["groupName"]: g for g in load(RAYCLUSTER)["spec"]["workerGroupSpecs"]}

    def kube_resources(group):
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        return {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}

    pairs = _job_config(*JOB_CONFIGS["jobs/build_prior_pairs.py"], "jobs/configs/prior_pairs_clip.yaml",
                        ["snapshot=/mnt/shared/gan/network-snapshot-final.safetensors"])
    actor = {"GPU": gen.gpus_per_actor, "CPU": gen.cpus_per_actor + gen.guidance_cpus}
    pairs_actor = {"GPU": pairs.gpus_per_actor, "CPU": pairs.cpus_per_actor}
    worker = {"GPU": 1.0 if train.scaling.use_gpu else 0.0, "CPU": train.scaling.cpus_per_worker}
    whole_run = {k: v * train.scaling.num_workers for k, v in worker.items()}
    for gen_group, train_group, gen_max in (
            (launcher["gpu_gen"]["resources"], launcher["gpu_train"]["resources"], launcher["gpu_gen"]["max_workers"]),
            (kube_resources(kuberay["gpu-gen"]), kube_resources(kuberay["gpu-train"]), kuberay["gpu-gen"]["maxReplicas"])):
        assert _fits(gen_group, actor), (gen_group, actor)
        assert _fits(gen_group, pairs_actor), (gen_group, pairs_actor)
        assert _fits(train_group, whole_run), (train_group, whole_run)   # one node, NCCL on NVLink
        assert not _fits(gen_group, worker), "a training worker would fit on a generation node"
        # The group can host the whole actor pool at full size.
        assert gen_max * gen_group["GPU"] // gen.gpus_per_actor >= gen.max_actors


def test_file_mounts_name_existing_repository_paths():
    mounts = load(LAUNCHER)["file_mounts"]
    local = [src for src in mounts.values() if not src.startswith("~")]
    assert local
    for src in local:
        assert (REPO / src).exists(), src
    assert {"./pyproject.toml", "./constraints.txt", "./avatar3d"} <= set(local)


# --------------------------------------------------------------------------- KubeRay


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_raycluster_structure():
    """Structural stand-in for the RayCluster CRD schema (not available offline)."""
    import ray

    docs = load_all(RAYCLUSTER)
    assert len(docs) == 1
    rc = docs[0]
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rc["metadata"]["name"])
    spec = rc["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["autoscalerOptions"].get("version") in (None, "v1", "v2")

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = [head, *spec["workerGroupSpecs"]]
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(set(names)) == len(names) == 2
    images = set()
    for group in groups:
        # KubeRay passes rayStartParams as `ray start --key=value`: string values, real options.
        for key, value in group["rayStartParams"].items():
            assert isinstance(value, str), (key, value)
            assert f"--{key}" in _ray_options(["start"]), key
        containers = _containers(group)
        assert containers and all(c["name"] and c["image"] for c in containers)
        images.update(c["image"] for c in containers)
        declared = {v["name"] for v in group["template"]["spec"].get("volumes", [])}
        for c in containers:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in declared, mount
    assert len(images) == 1, f"one image for every group, got {images}"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["replicas"] == 0
        assert group["maxReplicas"] >= 1
        limits = _containers(group)[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert limits == _containers(group)[0]["resources"]["requests"]  # GPUs cannot be overcommitted


def test_rayjobs_target_the_raycluster_with_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    cluster_name = load(RAYCLUSTER)["metadata"]["name"]
    jobs = load_all(RAYJOB)
    assert len(jobs) >= 1
    shared_env = load(RUNTIME_ENV)["env_vars"]
    image_workdir = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), flags=re.M).group(1)
    for job in jobs:
        assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
        assert job["metadata"].get("name") or job["metadata"].get("generateName")
        spec = job["spec"]
        assert spec["entrypoint"].strip()
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster_name}
        assert "rayClusterSpec" not in spec
        assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        # working_dir is the code baked into the image (the Dockerfile's WORKDIR); Ray's
        # validation wants it to exist, so stand this checkout in for the image's copy.
        assert runtime_env["working_dir"] == image_workdir
        RuntimeEnv(**{**runtime_env, "working_dir": str(REPO)})  # Ray's own validation of every field
        for key, value in runtime_env.get("env_vars", {}).items():
            if key in shared_env:
                assert value == shared_env[key], f"{key} differs from cluster/runtime_env.yaml"


# --------------------------------------------------------------------------- runtime env


def test_runtime_env_is_valid_and_its_upload_is_small_and_complete(tmp_path):
    """Package the working tree exactly as `ray job submit` would and look inside."""
    import subprocess

    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, _zip_files
    from ray.runtime_env import RuntimeEnv

    env = load(RUNTIME_ENV)
    RuntimeEnv(**env)
    assert "pip" not in env and "conda" not in env and "uv" not in env  # the nodes carry the pinned stack
    assert "OMP_NUM_THREADS" not in env["env_vars"]  # Ray sizes it per worker when unset
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"

    zip_path = tmp_path / "pkg.zip"
    excludes = ray_constants.get_runtime_env_default_excludes() + env["excludes"]
    _zip_files(str(REPO), excludes, str(zip_path), include_gitignore=True, logger=logging.getLogger(__name__))
    names = set(zipfile.ZipFile(zip_path).namelist())
    size = zip_path.stat().st_size
    assert size < 20 * 2**20 < GCS_STORAGE_MAX_SIZE, f"working_dir package is {size / 2**20:.1f} MiB"
    top = {n.split("/")[0] for n in names}
    assert not top & {".git", ".venv", "outputs", ".cache", "mlruns", "mlflow.db", ".pytest_cache"}, top
    tracked = subprocess.run(["git", "ls-files", "avatar3d", "jobs"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    present = [p for p in tracked if (REPO / p).is_file()]
    missing = [p for p in present if p not in names]
    assert present and not missing, f"excluded from the job upload: {missing[:5]}"


# --------------------------------------------------------------------------- commands named


def _ray_options(path: list[str]) -> set[str]:
    from ray.scripts.scripts import cli

    cmd = cli
    for name in path:
        cmd = cmd.commands[name]
    return {opt for p in cmd.params for opt in p.opts if opt.startswith("-")} | {"--help"}


def _ray_command(tokens: list[str]) -> tuple[list[str], list[str]]:
    """(command path, its option tokens) for a `ray ...` token list (after `ray`)."""
    from ray.scripts.scripts import cli

    cmd, path, i = cli, [], 0
    while hasattr(cmd, "commands") and i < len(tokens) and not tokens[i].startswith("-"):
        assert tokens[i] in cmd.commands, f"`ray {' '.join(path + [tokens[i]])}` is not a Ray command"
        cmd = cmd.commands[tokens[i]]
        path.append(tokens[i])
        i += 1
    flags = []
    for tok in tokens[i:]:
        if tok == "--":
            break
        if tok.startswith("-"):
            flags.append(tok.split("=", 1)[0])
    return path, flags


_ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


def _segments(line: str) -> list[list[str]]:
    """Shell-ish split of one logical command line into simple commands (env assignments dropped)."""
    out = []
    for part in re.split(r"&&|\|\||;|\|", line):
        part = part.strip().strip("()").strip()
        if not part:
            continue
        try:
            tokens = shlex.split(part, comments=True)
        except ValueError:
            tokens = part.split()
        while tokens and _ENV_ASSIGN.match(tokens[0]):
            tokens.pop(0)
        if tokens:
            out.append(tokens)
    return out


def _logical_lines(text: str, comment_prefix: str | None) -> list[str]:
    """Join backslash continuations; strip a comment marker (YAML `#`, Dockerfile `#`)."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if comment_prefix and line.startswith(comment_prefix):
            line = line[len(comment_prefix):].strip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    if buf:
        lines.append(buf)
    return lines


def _markdown_commands(text: str) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    lines = [ln for b in blocks for ln in _logical_lines(b, "#")]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return lines


def _commands_in(path: Path) -> list[list[str]]:
    """Every simple command a file names: in YAML comments and values, Markdown code, Dockerfile lines.

    `avatar3d` is also this project's name in prose, so comment lines only count
    when they start with `ray` or `python`; `avatar3d <cmd>` is taken from code
    (backticks, Markdown code blocks, YAML values) only.
    """
    text = path.read_text()
    code: list[str] = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    comments: list[str] = []
    if path.suffix == ".md":
        blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
        code += [ln for b in blocks for ln in _logical_lines(b, "#")]
    elif path.suffix in (".yaml", ".yml"):
        comments = _logical_lines("\n".join(ln for ln in text.splitlines() if ln.strip().startswith("#")), "#")
        for doc in load_all(path):
            for s in yaml_strings(doc):
                code += _logical_lines(s, None) if "\n" in s else [s]
    else:
        comments = _logical_lines(text, "#")
    commands = []
    for line, words in [(ln, ("ray", "python", "avatar3d")) for ln in code] + [(ln, ("ray", "python")) for ln in comments]:
        for tokens in _segments(line):
            if tokens[0] in words and len(tokens) > 1:
                commands.append(tokens)
    return commands


FILES_WITH_COMMANDS = [LAUNCHER, RUNTIME_ENV, RAYCLUSTER, RAYJOB, DOCKERFILE, DOCS]


def _all_commands() -> dict[str, list[list[str]]]:
    return {p.relative_to(REPO).as_posix(): _commands_in(p) for p in FILES_WITH_COMMANDS}


def test_files_name_commands_at_all():
    """Guards the extractor: the commands these files are about are found."""
    found = _all_commands()
    flat = [" ".join(c) for cmds in found.values() for c in cmds]
    assert any(" ".join(c).startswith("ray start --head") for c in found["cluster/cluster.yaml"])
    assert any(c[:3] == ["ray", "job", "submit"] for c in found["docs/cluster.md"])
    assert any("jobs/generate_dataset.py" in c for c in flat)
    assert any(c[:2] == ["python", "jobs/train_gan.py"] for c in found["cluster/kuberay/rayjob.yaml"])
    docs_jobs = {job[0] for c in found["docs/cluster.md"] for job in _python_job_invocations(c)}
    assert {"jobs/generate_dataset.py", "jobs/train_gan.py", "jobs/run_pipeline.py", "jobs/evaluate.py",
            "jobs/export_mesh.py"} <= docs_jobs
    assert {_job_subcommand("jobs/evaluate.py"), _job_subcommand("jobs/export_mesh.py")} == {"fid", "export-mesh"}


def _python_job_invocations(tokens: list[str]) -> list[list[str]]:
    """`python jobs/<name>.py` commands, also those after `ray job submit ... --` (not `jobs/...` placeholders)."""
    out = []
    for i, tok in enumerate(tokens):
        if tok == "python" and i + 1 < len(tokens) and re.fullmatch(r"jobs/[\w/]+\.py", tokens[i + 1]):
            out.append(tokens[i + 1:])
    return out


def _cli_invocations(tokens: list[str]) -> list[list[str]]:
    """Arguments of `avatar3d ...` / `python -m avatar3d ...`, also after `ray job submit ... --`."""
    out = []
    for i, tok in enumerate(tokens):
        if tok == "avatar3d" and (i == 0 or tokens[i - 1] in ("--", "-m")):
            out.append(tokens[i + 1:])
    return out


def _job_subcommand(script: str) -> str:
    """The CLI subcommand a job entry point delegates to (same options)."""
    match = re.search(r'main\(\[\s*"([a-z-]+)"', (REPO / script).read_text())
    return match.group(1) if match else "generate"  # generate_dataset.py parses `generate`'s options itself


def _parse_cli(argv: list[str], what: str) -> None:
    from avatar3d.cli import build_parser

    if "--help" in argv or "-h" in argv:
        argv = argv[:1]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{what}: the avatar3d CLI rejects {argv} (exit {exc.code})")


@pytest.mark.parametrize("source", [p.relative_to(REPO).as_posix() for p in FILES_WITH_COMMANDS])
def test_named_commands_and_entrypoints_exist(source, capsys):
    from avatar3d.config import ConfigError

    for tokens in _all_commands()[source]:
        if tokens[0] == "ray":
            path, flags = _ray_command(tokens[1:])
            known = _ray_options(path)
            unknown = [f for f in flags if f not in known]
            assert not unknown, f"{source}: `ray {' '.join(path)}` has no option {unknown}"
        for argv in _cli_invocations(tokens):
            _parse_cli(argv, source)
        for job in _python_job_invocations(tokens):
            script, args = job[0], job[1:]
            assert (REPO / script).is_file(), f"{source}: {script} does not exist"
            _parse_cli([_job_subcommand(script), *args], f"{source}: {script}")
            config = args[args.index("--config") + 1] if "--config" in args else None
            if config:
                assert (REPO / config).is_file(), f"{source}: {config} does not exist"
            if script in JOB_CONFIGS:
                overrides = [a for a in args if "=" in a and not a.startswith("-")]
                try:
                    _job_config(*JOB_CONFIGS[script], config, overrides)
                except ConfigError as err:
                    pytest.fail(f"{source}: {' '.join(job)}: {err}")


def test_docs_cover_every_job_entry_point():
    text = DOCS.read_text()
    entry_points = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "jobs").glob("*.py"))
    assert entry_points
    missing = [p for p in entry_points if p not in text]
    assert not missing, f"docs/cluster.md does not say how to submit {missing}"


def test_dockerfile_copies_existing_paths_on_the_pinned_ray():
    import ray

    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, flags=re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311"), base
    assert load(LAUNCHER)["docker"]["image"] == base
    for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M):
        sources = [t for t in line.split() if not t.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile COPY {src}: not in the repository"
    assert re.search(r"^RUN .*sh cluster/install\.sh ", text, flags=re.M)  # the one install path (test_install.py)
