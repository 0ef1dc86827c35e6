"""Optional compiled CPU kernels, each with a pure-PyTorch path computing the same maths.

Built on first use with ``torch.utils.cpp_extension.load`` (gcc and ninja, which
the install brings for DeepSpeed's ops too) into ``$TORCH_EXTENSIONS_DIR``, under a
name that hashes the source, the torch version and this CPU's flags (the build
uses ``-march=native``), so a shared cache never hands one machine another's
binary. Set ``AVATAR3D_NATIVE_OPS=0`` to use the PyTorch paths only; a failed
build warns once and falls back the same way. GPU tensors never come here.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

_SOURCE = Path(__file__).with_name("triplane_cpu.cpp")
_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}


def native_ops_enabled() -> bool:
    return os.environ.get("AVATAR3D_NATIVE_OPS", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def triplane_ops() -> ModuleType | None:
    """The compiled tri-plane module (``forward`` / ``backward``), or None to use PyTorch ops."""
    if not native_ops_enabled():
        return None
    with _lock:
        if "triplane" not in _loaded:
            _loaded["triplane"] = _build()
        return _loaded["triplane"]


def _build() -> ModuleType | None:
    import torch
    from torch.utils.cpp_extension import load

    digest = hashlib.sha1(_SOURCE.read_bytes() + torch.__version__.encode() + _cpu_signature().encode())
    try:
        return load(name=f"avatar3d_triplane_{digest.hexdigest()[:12]}", sources=[str(_SOURCE)],
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, a read-only cache...: the PyTorch path still works
        warnings.warn(f"avatar3d: the compiled tri-plane CPU kernel is unavailable ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); using grid_sample instead. "
                      "Set AVATAR3D_NATIVE_OPS=0 to silence this.", RuntimeWarning, stacklevel=3)
        return None
