"""Compiled CPU ops for training processes: opt-in per process, never built by model code.

``triplane_cpu.cpp`` holds the tri-plane bilinear lookup with its gradient and the
decoder's bias + softplus in one vectorised pass. They compute what the PyTorch
paths of :mod:`avatar3d.gan.triplane` and :mod:`avatar3d.gan.renderer` compute,
up to float rounding (another summation order, libmvec's ``expf``/``log1pf``).

Who uses them, and why only they:

* A process opts in with :func:`enable_training_ops` (the GAN's Ray Train worker,
  the benchmarks). That builds the extension once with ``-march=native`` (gcc and
  ninja, ~40 s, cached in ``$TORCH_EXTENSIONS_DIR`` under a name that hashes the
  source, the torch version and this CPU's flags) and loads it. Nothing else
  builds or loads it: importing or running :mod:`avatar3d.gan` for inference (a
  pyfunc consumer, export-mesh, FID) never compiles C++.
* Even there, only **training-mode** renders use them (the renderer passes
  ``compiled=self.training``): the trainer's G forward and backward. Every
  eval-mode render -- the EMA generator's sample grids, FID, snapshots (loaded in
  eval mode), pyfunc, export-mesh -- takes the PyTorch path in every process, so
  one snapshot, seed and camera give the same bytes in the process that trained
  it and in any consumer. (Training mode already renders differently: density
  noise.)

``AVATAR3D_NATIVE_OPS=0`` turns the ops off (:func:`enable_training_ops` then
returns False and builds nothing); a failed build warns once and the PyTorch
paths run.
"""
from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path
from types import ModuleType

from avatar3d.runtime import env_flag

_HERE = Path(__file__).parent
_lock = threading.Lock()
_enabled = False  # set by enable_training_ops() only
_module: ModuleType | None = None  # the loaded build (None before one, or after a failed one)
_tried = False  # a failed build is not retried (nor warned about) again in this process
# glibc's vector math library (16-lane expf / log1pf) for the decoder's softplus.
_LDFLAGS = ["-lmvec"]


def native_ops_enabled() -> bool:
    """The ``AVATAR3D_NATIVE_OPS`` switch (default on); read at each call, so a process can flip it."""
    return env_flag("AVATAR3D_NATIVE_OPS")


def enable_training_ops(device: str | None = None) -> bool:
    """Build (first time on this machine) and load the compiled CPU ops for this process's training.

    For training and benchmark processes only. ``device`` is where training runs: on a
    GPU the ops would never be used, so nothing is built. Returns whether they are on.
    """
    global _enabled, _module, _tried
    if device is not None and str(device).split(":")[0] != "cpu":
        return False
    if not native_ops_enabled():
        return False
    with _lock:
        if not _tried:
            _module, _tried = _build("triplane_cpu"), True
        _enabled = _module is not None
    return _enabled


def training_ops() -> ModuleType | None:
    """The compiled module if this process enabled it (and the switch is on), else None. Never builds."""
    return _module if _enabled and native_ops_enabled() else None


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _build(name: str) -> ModuleType | None:
    import torch
    from torch.utils.cpp_extension import load

    source = _HERE / f"{name}.cpp"
    digest = hashlib.sha1(source.read_bytes() + torch.__version__.encode() + _cpu_signature().encode())
    try:
        return load(name=f"avatar3d_{name}_{digest.hexdigest()[:12]}", sources=[str(source)],
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], extra_ldflags=_LDFLAGS, verbose=False)
    except Exception as exc:  # no compiler, no ninja, a read-only cache...: the PyTorch paths still work
        first = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(f"avatar3d: compiled CPU code {name!r} is unavailable ({type(exc).__name__}: {first}); "
                      "using the PyTorch path. Set AVATAR3D_NATIVE_OPS=0 to silence this.",
                      RuntimeWarning, stacklevel=3)
        return None
