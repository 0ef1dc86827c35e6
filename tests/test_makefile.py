"""The README's two commands as the Makefile and CI define them, and the install's torch pins.

``make -n`` prints a target's recipe without running it (no install, no demo); the printed demo line is
then run by ``sh`` with ``PY`` pointed at a stub that reports its arguments and ``GLIBC_TUNABLES``, so the
shell's own expansion of the recipe is what is checked.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from tests import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

TUNABLES = re.search(r"^TRAIN_GLIBC_TUNABLES \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
STUB = """#!{python}
import json, os, sys
print("STUB " + json.dumps({{"argv": sys.argv[1:], "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES")}}))
"""


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MAKEFLAGS", "MFLAGS", "ARGS")}
    env.update(extra)
    return env


def _dry_run(*args: str, **env) -> list[str]:
    """The recipe lines ``make -n`` prints (install lines too where the venv's stamp is missing or stale)."""
    done = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _the_line(lines: list[str], needle: str) -> str:
    found = [line for line in lines if needle in line]
    assert len(found) == 1, f"expected one recipe line with {needle!r}, got:\n" + "\n".join(lines)
    return found[0]


def _run_demo_line(tmp_path, args: str, **env) -> dict:
    """Run the demo recipe line ``make -n demo`` prints, with the stub as $(PY); -> what the stub saw."""
    stub = tmp_path / "python-stub"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    line = _the_line(_dry_run("demo", f"PY={stub}", f"ARGS={args}"), "jobs/run_pipeline.py")
    done = subprocess.run(["sh", "-c", line], cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    (report,) = [out for out in done.stdout.splitlines() if out.startswith("STUB ")]
    return json.loads(report[len("STUB "):])


def test_make_demo_runs_the_pipeline_job_on_the_demo_config_with_the_args(tmp_path):
    line = _the_line(_dry_run("demo", "ARGS=x=y from_stage=report"), "jobs/run_pipeline.py")
    assert line.endswith(".venv/bin/python jobs/run_pipeline.py --config jobs/configs/demo_tiny.yaml "
                         "x=y from_stage=report"), line
    seen = _run_demo_line(tmp_path, "x=y output_dir=outputs/demo2")
    assert seen["argv"] == ["jobs/run_pipeline.py", "--config", "jobs/configs/demo_tiny.yaml", "x=y",
                            "output_dir=outputs/demo2"]
    # The demo's processes get the Makefile's allocator tunables; a value exported beforehand wins.
    assert seen["GLIBC_TUNABLES"] == TUNABLES == "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=8589934592"
    assert _run_demo_line(tmp_path, "", GLIBC_TUNABLES="glibc.malloc.arena_max=2")["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2"
    # README's off switch: an exported empty value means glibc's defaults (it used to be replaced by the tunables).
    assert _run_demo_line(tmp_path, "", GLIBC_TUNABLES="")["GLIBC_TUNABLES"] == ""


def test_make_test_keeps_glibcs_defaults_while_make_demo_sets_the_tunables():
    test_line = _the_line(_dry_run("test"), "-m pytest")
    assert shlex.split(test_line)[1:] == ["-m", "pytest", "-q", "--durations=15", "-m", "not slow"]
    assert "GLIBC_TUNABLES" not in "\n".join(_dry_run("test"))
    assert "GLIBC_TUNABLES" in _the_line(_dry_run("demo"), "jobs/run_pipeline.py")
    assert not re.search(r"^export\s+GLIBC_TUNABLES", (REPO / "Makefile").read_text(), re.M)  # not for all targets


def test_ci_runs_make_test_and_nothing_else():
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    # the shell options and the move to the checkout's root are set-up, not commands of their own
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]


def test_torch_and_torchvision_are_pinned_and_installed_at_the_pins():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    constraints = [line.split("#")[0].strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    for name, version in (("torch", "2.14.1"), ("torchvision", "0.29.1")):
        pin = f"{name}=={version}"
        assert pin in deps, f"pyproject.toml does not pin {pin}: {deps}"
        assert [c for c in constraints if re.match(rf"{name}\s*[=<>~!]", c)] == [pin]
        assert metadata.version(name).split("+")[0] == version
