"""The one staged-commit helper (packft.core.atomic): every writer goes through it, and its staged
directories, symlinks and adopted files commit whole or not at all.

The first test reads the source (like tests/test_architecture.py): outside the staged-commit
modules (packft/core/atomic.py and the durable.py and journal.py it is built from) no module of packft, flows, tasks or deployments renames into place, fsyncs or makes temporary
files by hand. The others use real files, real processes and real SIGKILLs.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from packft.core import durable
from packft.core.atomic import Stage, atomic_dir
from packft.core.writers import TEMP_RE, sweep

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("packft", "flows", "tasks", "deployments")
ALLOWED = {REPO / "packft" / "core" / f"{name}.py" for name in ("atomic", "durable", "journal")}
BANNED = {
    "os.replace", "os.rename", "os.renames", "os.fsync", "os.fdatasync",
    "tempfile.mkstemp", "tempfile.mkdtemp", "shutil.move",
}  # fmt: skip


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for ``import os as o`` / ``from os import replace as r``."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def hand_rolled_commits(source: str, filename: str = "<source>") -> list[str]:
    """``file:line call`` for each banned call: the names in :data:`BANNED` (through any import
    alias), any ``.rename(...)`` and a one-positional-argument ``.replace(x)`` (``Path.replace``;
    ``str.replace`` takes two, ``datetime.replace`` keywords)."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        one_arg = len(node.args) == 1 and not node.keywords  # not datetime.replace(tzinfo=)
        if name in BANNED or method == "rename" or (method == "replace" and one_arg):
            found.append(f"{filename}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_only_atomic_renames_into_place_or_fsyncs() -> None:
    offenders = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if path not in ALLOWED:
                offenders += hand_rolled_commits(path.read_text(), str(path.relative_to(REPO)))
    assert offenders == [], "write through packft.core.atomic (Stage, atomic_dir, atomic_writer)"
    for path in sorted(ALLOWED):  # the allowed list names exactly the modules that do it
        assert hand_rolled_commits(path.read_text(), path.name), f"{path.name} need not be allowed"


def test_the_source_check_sees_each_way_of_writing_it() -> None:
    source = """
import os, shutil
import tempfile as tf
from os import replace as swap
from pathlib import Path
os.replace(a, b); swap(a, b); os.fsync(fd); tf.mkstemp(); shutil.move(a, b)
Path(a).rename(b); Path(a).replace(b)
"text".replace("a", "b"); os.path.join(a, b); now.replace(tzinfo=utc)
"""
    found = [line.split(" ", 1)[1] for line in hand_rolled_commits(source)]
    assert found == ["os.replace", "swap", "os.fsync", "tf.mkstemp", "shutil.move",
                     "Path(a).rename", "Path(a).replace"]  # fmt: skip


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "no-exchange"])
def test_staged_directory_replaces_the_old_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:  # a file system without renameat2(RENAME_EXCHANGE): the hidden-old-name path
        monkeypatch.setattr(durable, "_exchange", lambda a, b: False)
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "a.bin").write_bytes(b"old")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.json").write_text("{}")
        assert not final.exists()  # nothing at the final name before the commit
    assert _tree(final) == {"a.bin": b"old", "sub/b.json": b"{}"}
    with pytest.raises(FileExistsError, match="already exists"), atomic_dir(final):
        pass
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "c.bin").write_bytes(b"new")
        assert _tree(final) == {"a.bin": b"old", "sub/b.json": b"{}"}
    assert _tree(final) == {"c.bin": b"new"}
    assert _hidden(tmp_path) == []  # no temporary, no old tree, no writer lock left


def test_a_failed_directory_write_leaves_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "w.pt").write_bytes(b"good")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(final, replace=True) as tmp:
        (tmp / "w.pt").write_bytes(b"half")
        raise RuntimeError("boom")
    assert _tree(final) == {"w.pt": b"good"}
    assert _hidden(tmp_path) == []


def test_symlink_switch_and_adopted_file(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    for target in ("v1", "v2"):
        with Stage(tmp_path) as stage:
            stage.symlink(tmp_path / "latest", target)
            stage.commit()
        assert os.readlink(tmp_path / "latest") == target
    part = tmp_path / "partial" / "x.part"
    part.parent.mkdir()
    part.write_bytes(b"downloaded")
    with Stage(tmp_path) as stage:
        record = stage.adopt(tmp_path / "blob", part)
        assert not (tmp_path / "blob").exists()
        stage.commit()
    assert (tmp_path / "blob").read_bytes() == b"downloaded" and not part.exists()
    assert record["size"] == 10 and len(record["sha256"]) == 64
    assert _hidden(tmp_path) == []


KILLED_WRITER = """
import sys
from pathlib import Path
from packft.core.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1]), replace=True, label="t") as tmp:
    (tmp / "new.bin").write_bytes(b"new")
"""


@pytest.mark.parametrize(("point", "committed"), [("t.staged", False), ("t.renamed", True)])
def test_sigkill_at_a_directory_commit_leaves_one_whole_tree(
    tmp_path: Path, point: str, committed: bool
) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "old.bin").write_bytes(b"old")
    env = {**os.environ, "PACKFT_FAULT": f"{point}=kill"}
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(final)], env=env, cwd=REPO)
    assert run.returncode == -signal.SIGKILL
    assert _tree(final) == ({"new.bin": b"new"} if committed else {"old.bin": b"old"})
    assert _hidden(tmp_path), "the kill left nothing to clean, so nothing was tested"
    assert all(TEMP_RE.match(n) or n.startswith(".packft-") for n in _hidden(tmp_path))
    sweep(tmp_path)  # what the next writer in this directory does first
    assert _hidden(tmp_path) == []
    assert _tree(final) == ({"new.bin": b"new"} if committed else {"old.bin": b"old"})
