"""The shape of the package: layers that only point down, no import cycles, light entry points.

Layers, lowest first (a module may import its own package and any lower layer;
``docs/architecture`` in the README's "How the data flows" says what each holds)::

    0  atomic, config, lock, logs, runtime, safeio, hub, native, tracking   cross-cutting foundations
    1  scene            2  prompts
    3  datagen          (generation and the one dataset reader)
    4  gan              (networks, the snapshot format, sample grids)
    5  evaluation       (FID, meshes, walks; training-time FID uses it, as EG3D's loop uses its metrics)
    6  training         (Ray Train + DeepSpeed for the GAN; the generator's registry entry)
    7  prior, lora
    8  report   8.5  chain_config (the chain's options, light for --help)   9  chain   10  cli

Every import counts, at the top of a module or inside a function.
"""
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "avatar3d"
RANK = {"atomic": 0, "config": 0, "lock": 0, "logs": 0, "runtime": 0, "safeio": 0, "hub": 0, "native": 0, "tracking": 0, "": 0,
        "scene": 1, "prompts": 2, "datagen": 3, "gan": 4, "evaluation": 5, "training": 6, "prior": 7, "lora": 7,
        "report": 8, "chain_config": 8.5, "chain": 9, "cli": 10, "__main__": 11}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """avatar3d modules imported anywhere in ``path`` (``from x import y`` counts y when it is a module)."""
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != mod}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_package_has_a_layer(graph):
    assert {layer(m) for m in graph} <= set(RANK), sorted({layer(m) for m in graph} - set(RANK))


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = layer(src), layer(dst)
            if a != b and RANK[b] >= RANK[a] and not (RANK[a] == RANK[b] == 0):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). An edge from inside a package
    to that package's own ``__init__`` is how Python resolves ``from avatar3d.gan.x import``: skipped."""
    edges = {m: {d for d in ts if not m.startswith(d + ".")} for m, ts in graph.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return cycles


def test_imports_only_point_down(graph):
    assert not upward_imports(graph), "imports that point up or sideways:\n" + "\n".join(upward_imports(graph))


def test_no_import_cycles(graph):
    assert not import_cycles(graph)


def test_the_checks_catch_an_upward_import_and_a_cycle(graph):
    fake = {**graph, "avatar3d.gan.fake": {"avatar3d.training.loop"}, "avatar3d.prior.fake": {"avatar3d.lora.train"}}
    assert upward_imports(fake) == ["avatar3d.gan.fake -> avatar3d.training.loop",
                                    "avatar3d.prior.fake -> avatar3d.lora.train"]
    fake = {**graph, "avatar3d.scene.a": {"avatar3d.scene.b"}, "avatar3d.scene.b": {"avatar3d.scene.a"}}
    assert ["avatar3d.scene.a", "avatar3d.scene.b"] in import_cycles(fake)


HEAVY = ("torch", "ray", "mlflow", "deepspeed", "diffusers", "transformers")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_help_imports_no_heavy_library():
    from avatar3d.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    cmds = ["[]", "['--help']"] + [f"[{c!r}, '--help']" for c in sorted(commands)]
    code = ("import contextlib, io\nfrom avatar3d.cli import main\n"
            + "".join(f"with contextlib.redirect_stdout(io.StringIO()):\n"
                      f"    try: main({c})\n    except SystemExit: pass\n" for c in cmds))
    assert _loaded_after(code) == set()


def test_model_code_imports_no_cluster_or_tracking_library():
    loaded = _loaded_after("import avatar3d.gan, avatar3d.gan.snapshot, avatar3d.gan.samples, avatar3d.scene")
    assert loaded <= {"torch"}, loaded
