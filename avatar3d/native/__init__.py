"""Optional compiled CPU code, each piece with a pure-PyTorch path that computes the same.

* ``triplane_ops()``: the tri-plane bilinear lookup and its gradient
  (:mod:`avatar3d.gan.triplane` uses it for CPU float32 tensors), and the
  decoder's bias + softplus in one vectorised pass (:mod:`avatar3d.gan.renderer`).
* ``install_caching_cpu_allocator()``: keeps large freed CPU blocks for reuse
  instead of returning them to the OS (no maths involved; see the source).

Built on first use with ``torch.utils.cpp_extension.load`` (gcc and ninja, which
the install brings for DeepSpeed's ops too) into ``$TORCH_EXTENSIONS_DIR``, under
names that hash the source, the torch version and this CPU's flags (the builds
use ``-march=native``), so a shared cache never hands one machine another's
binary. ``AVATAR3D_NATIVE_OPS=0`` turns all of it off; a failed build warns once
and falls back the same way.
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
_loaded: dict[str, ModuleType | None] = {}
# glibc's vector math library (16-lane expf / log1pf) for the decoder's softplus.
_LDFLAGS = {"triplane_cpu": ["-lmvec"]}


def native_ops_enabled() -> bool:
    return env_flag("AVATAR3D_NATIVE_OPS")


def triplane_ops() -> ModuleType | None:
    """The compiled tri-plane module (``forward`` / ``backward``), or None to use PyTorch ops."""
    return _module("triplane_cpu") if native_ops_enabled() else None


def install_caching_cpu_allocator(limit_mb: int) -> bool:
    """Make torch keep up to ``limit_mb`` MB of freed large CPU blocks for reuse. True if installed.

    Process-wide and meant for training / benchmark processes (the default limit is
    :data:`avatar3d.runtime.DEFAULT_CPU_CACHE_MB`); called again, it only changes the limit.
    A no-op returning False where native code is off or could not be built.
    """
    if not native_ops_enabled():
        return False
    mod = _module("caching_allocator")
    if mod is None:
        return False
    mod.install(int(limit_mb) << 20)
    return True


def empty_caching_allocator() -> int:
    """Free every cached block now; returns the bytes released (0 if the allocator was never built)."""
    mod = _loaded.get("caching_allocator")
    return int(mod.empty_cache()) if mod is not None else 0


def caching_allocator_stats() -> dict[str, int] | None:
    """installed, cached_bytes, limit, hits, misses of the caching allocator (None if never built)."""
    mod = _loaded.get("caching_allocator")
    if mod is None:
        return None
    return dict(zip(("installed", "cached_bytes", "limit", "hits", "misses"), mod.stats()))


def _module(name: str) -> ModuleType | None:
    with _lock:
        if name not in _loaded:
            _loaded[name] = _build(name)
        return _loaded[name]


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
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], extra_ldflags=_LDFLAGS.get(name, []),
                    verbose=False)
    except Exception as exc:  # no compiler, no ninja, a read-only cache...: the PyTorch paths still work
        first = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(f"avatar3d: compiled CPU code {name!r} is unavailable ({type(exc).__name__}: {first}); "
                      "using the PyTorch path. Set AVATAR3D_NATIVE_OPS=0 to silence this.",
                      RuntimeWarning, stacklevel=3)
        return None
