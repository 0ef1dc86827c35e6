"""docs/claims.md (which test backs each README claim) does not rot: every test it names exists.

The test modules are parsed with ``ast``, never imported, so this runs in well under a second and
needs none of the heavy libraries. A reference is ``tests/<path>.py::<name>`` (a test function or
class at the top of the module) or ``tests/<path>.py::<Class>::<method>``; a parametrized test is
named without its ``[...]`` id.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from tests import REPO

CLAIMS = REPO / "docs" / "claims.md"
REFERENCE = re.compile(r"\btests/[\w./-]+?\.py::[\w:]+(\[[^\]`]*\])?")
ROW = re.compile(r"^\| (\d+) \|(.*)$", re.M)
UNBACKED = "## Not backed by a test yet"
FALSE = "### Believed false when first written"


def references(text: str) -> list[str]:
    return [m.group(0) for m in REFERENCE.finditer(text)]


@lru_cache(maxsize=None)
def defined_tests(path: Path) -> frozenset[str]:
    """Top-level ``test*`` functions and ``Test*`` classes of a module, and ``Class::method`` for the methods
    of those classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.add(node.name)
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"))
    return frozenset(names)


def check_reference(ref: str) -> str | None:
    """None when ``ref`` names an existing test, else what is wrong with it."""
    if "[" in ref:
        return f"{ref}: name a parametrized test without its [...] id"
    path, _, name = ref.partition("::")
    file = (REPO / path).resolve()
    if not file.is_relative_to((REPO / "tests").resolve()):
        return f"{ref}: not a file under tests/"
    if not file.is_file():
        return f"{ref}: {path} does not exist"
    if name not in defined_tests(file):
        return f"{ref}: {path} defines no test function or class {name!r} (renamed or removed?)"
    return None


def test_every_test_named_in_the_claims_exists():
    refs = references(CLAIMS.read_text())
    assert len(refs) > 100, f"only {len(refs)} test references found in {CLAIMS}: has the format changed?"
    problems = sorted({p for p in map(check_reference, refs) if p})
    assert not problems, (f"{CLAIMS.relative_to(REPO)} names tests that do not exist; update the doc (or the "
                          f"claim's status) with the test:\n  " + "\n  ".join(problems))


def test_claims_are_numbered_once_and_partial_ones_say_what_is_missing():
    """Each claim has one row in its README section's table or, with no backing test, one row under
    "Not backed by a test yet"; a claim marked partial has a row in both; the counts line adds up."""
    text = CLAIMS.read_text()
    assert UNBACKED in text and FALSE in text, f"{CLAIMS}: the sections {UNBACKED!r} and {FALSE!r} are expected"
    sections, _, rest = text.partition(UNBACKED)
    unbacked_part = rest.partition(FALSE)[0]
    backed_rows = [(int(m.group(1)), "**partial**" in m.group(2)) for m in ROW.finditer(sections)]
    unbacked = [int(m.group(1)) for m in ROW.finditer(unbacked_part)]
    for label, ids in (("section tables", [i for i, _ in backed_rows]), ("'Not backed' table", unbacked)):
        twice = sorted(i for i, n in Counter(ids).items() if n > 1)
        assert not twice, f"claims numbered twice in the {label}: {twice}"
    backed = dict(backed_rows)
    every = set(backed) | set(unbacked)
    assert every == set(range(1, max(every) + 1)), f"claim numbers missing: {sorted(set(range(1, max(every) + 1)) - every)}"
    partial = {i for i, p in backed.items() if p}
    assert partial <= set(unbacked), f"partial claims without their missing part listed: {sorted(partial - set(unbacked))}"
    not_partial = sorted(set(unbacked) & set(backed) - partial)
    assert not not_partial, f"claims listed as not backed but not marked **partial** in their table: {not_partial}"
    counts = re.search(r"Counts: (\d+) claims; (\d+) backed, (\d+) partly backed, (\d+) not backed", text)
    assert counts, "the 'Counts: N claims; B backed, P partly backed, U not backed' line is missing"
    expected = (len(every), len(backed) - len(partial), len(partial), len(set(unbacked) - set(backed)))
    assert tuple(map(int, counts.groups())) == expected, f"update the counts line to {expected}"


def test_every_section_names_readme_headings():
    """A claims section is named by the README heading it covers (or several, comma-separated), so a renamed
    or removed README section shows here instead of the doc quietly pointing at nothing."""
    headings = [re.sub(r"^#+\s*", "", h) for h in re.findall(r"^#{2,3} .+$", (REPO / "README.md").read_text(), re.M)]
    sections = re.findall(r"^## (.+)$", CLAIMS.read_text().partition(UNBACKED)[0], re.M)
    assert len(sections) > 10, f"only {len(sections)} sections found in {CLAIMS}: has the format changed?"

    def named(title):
        return any(h.startswith(title) for h in headings)

    missing = [t for t in sections if not t.startswith("Added with")
               and not named(t) and not all(named(part) for part in t.split(", "))]
    assert not missing, f"{CLAIMS.relative_to(REPO)} sections that name no README heading: {missing}"


def test_the_readme_points_to_the_claims():
    assert "docs/claims.md" in (REPO / "README.md").read_text()


def test_the_checks_catch_a_renamed_test_and_a_parametrize_id():
    """The reference check is live: a missing test, a missing file and an id in brackets are all reported."""
    assert check_reference("tests/test_claims.py::test_every_test_named_in_the_claims_exists") is None
    assert "defines no test" in check_reference("tests/test_claims.py::test_that_was_renamed")
    assert "does not exist" in check_reference("tests/no_such_module.py::test_x")
    assert "without its [...] id" in check_reference("tests/test_cli.py::test_every_subcommand_has_help[guidance]")
    assert references("see `tests/a/b.py::test_c` and tests/d.py::TestE::test_f") == [
        "tests/a/b.py::test_c", "tests/d.py::TestE::test_f"]
