"""The README's promises point at real tests: every ``tests/...py::test_name`` it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`|`::(\w+)`")


def guarantees() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Guarantees", 1)[1]
    return section.split("\n## ", 1)[0]


def named_tests(section: str) -> list[tuple[str, str]]:
    """(file, test) pairs; a bare ``::name`` refers to the file named last before it."""
    found, last = [], None
    for match in NAMED.finditer(section):
        path, name, bare = match.groups()
        last = path or last
        found.append((last, name or bare))
    return found


def function_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_guarantee_names_an_existing_test() -> None:
    pairs = named_tests(guarantees())
    assert len(pairs) >= 30, pairs
    missing = [
        f"{path}::{name}"
        for path, name in pairs
        if path is None or not (ROOT / path).is_file() or name not in function_names(ROOT / path)
    ]
    assert missing == []
