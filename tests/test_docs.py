"""The project's markdown does not point at files that moved: every repository path it quotes exists.

A quoted path is a backticked token that starts at one of the repository's top folders and names a file
(it ends in an extension) or a folder (it ends in ``/``). A path may be written from the repository root
(``evaluation/ablation/RULE.md``) or from inside the package, as docs/method.md does for its sections
(``evaluation/truth.py`` for ``avatar3d/evaluation/truth.py``). Hub-style model names
(``avatar3d/procedural-painter-v1``) are not paths and are not checked. Text only, no imports: well
under a second.
"""
from __future__ import annotations

import re
from pathlib import Path

from tests import REPO

TOP = ("avatar3d", "evaluation", "jobs", "tests", "cluster", "docs", "viewer", "prior", "scene", "datagen",
       "training", "gan", "lora", "tracking", "prompts", "chain", "cli", ".ci")
QUOTED = re.compile(r"`((?:" + "|".join(map(re.escape, TOP)) + r")/[\w./-]*?(?:\.[a-z]{1,11}|/))`")
# Paths quoted on purpose that are not in this repository: another project's file, or history.
ELSEWHERE = {
    ("evaluation/training/README.md", "docs/configs.md"): "NVlabs StyleGAN3's docs/configs.md",
    ("evaluation/gan/README.md", "avatar3d/native/caching_allocator.cpp"): "removed in fbf6bd8; the text is its history",
}
SKIP_DIRS = {".venv", "outputs", "node_modules", ".cache", ".git", ".pytest_cache"}


def markdown_files() -> list[Path]:
    files = [REPO / "README.md"]
    for top in ("docs", "evaluation", "jobs", "cluster", "tests", "viewer"):
        files += [p for p in sorted((REPO / top).rglob("*.md")) if not SKIP_DIRS & set(p.relative_to(REPO).parts)]
    return files


def quoted_paths(text: str) -> list[str]:
    return [m.group(1) for m in QUOTED.finditer(text)]


def exists(path: str) -> bool:
    """From the repository root, or from inside the package (``evaluation/truth.py``)."""
    return any((base / path).exists() for base in (REPO, REPO / "avatar3d"))


def missing_paths(doc: Path, text: str) -> list[str]:
    rel = str(doc.relative_to(REPO))
    return [p for p in quoted_paths(text) if not exists(p) and (rel, p) not in ELSEWHERE]


def test_every_path_the_docs_quote_exists():
    texts = {d: d.read_text() for d in markdown_files()}
    assert len(texts) >= 15, f"only {len(texts)} markdown files found: has the layout changed?"
    quoted = sum(len(quoted_paths(t)) for t in texts.values())
    assert quoted > 200, f"only {quoted} quoted paths found: has the pattern stopped matching?"
    problems = [f"{d.relative_to(REPO)}: `{p}`" for d, t in texts.items() for p in missing_paths(d, t)]
    assert not problems, "the docs quote paths that do not exist (moved or removed?):\n  " + "\n  ".join(problems)


def test_the_exceptions_are_still_quoted():
    """An exception nobody quotes any more goes, so the list cannot hide a later mistake."""
    for doc, path in ELSEWHERE:
        assert path in quoted_paths((REPO / doc).read_text()), f"{doc} no longer quotes {path}: drop it from ELSEWHERE"


def test_the_check_catches_a_moved_file():
    assert exists("evaluation/ablation/ablation_discriminator.py")  # root-relative
    assert exists("evaluation/truth.py")  # package-relative
    assert not exists("evaluation/ablation_discriminator.py")  # where it was before it moved
    assert quoted_paths("`evaluation/ablation_discriminator.py` and `jobs/configs/` but not "
                        "`avatar3d/procedural-painter-v1` or `avatar3d.gan`") == [
        "evaluation/ablation_discriminator.py", "jobs/configs/"]
