"""packft's layout is the pipeline's DAG: imports go one way, and never up into orchestration.

The import graph is built from the source with :mod:`ast`: every ``import`` anywhere in a module
(module level, inside functions, which packft uses to import lazily, and under
``TYPE_CHECKING``). Importing ``packft.a.b.c`` also runs the ``__init__`` of ``packft.a`` and
``packft.a.b``, so those are edges too (except the importer's own packages, already loading).
Checked: no cycle between modules or between packages; every package imports only the packages
:data:`MAY_IMPORT` lists (the DAG, written out); packft never imports Prefect, ``flows`` or
``tasks``; only ``packft/track/`` imports MLflow; the CLI dispatcher names its command modules
by string; and the flows' config and every package ``__init__`` load without torch.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKFT = REPO / "packft"

DATA_CHAIN = ("core", "ingest", "tokenize", "pack", "dataset", "preprocess")
MODEL_CHAIN = ("core", "ckpt", "train")
MAY_IMPORT: dict[str, frozenset[str]] = {
    # the data half: each stage may use the stages before it
    **{stage: frozenset(DATA_CHAIN[:i]) for i, stage in enumerate(DATA_CHAIN)},
    # the model half; train reads the datasets written by the data half
    **{stage: frozenset(MODEL_CHAIN[:i]) for i, stage in enumerate(MODEL_CHAIN) if i},
    "track": frozenset({"core"}),
    # top-level modules
    "pipeline_config": frozenset({*DATA_CHAIN, "ckpt", "train", "track"}),
    "synthetic": frozenset({"core", "ingest"}),
    "cli": frozenset({"core"}),  # command modules are named by string, imported on use
    "__main__": frozenset({"cli"}),
    "packft": frozenset(),  # packft/__init__.py: the version only
}
MAY_IMPORT["train"] |= {"dataset", "track"}
MAY_IMPORT["preprocess"] |= {"track"}
PACKAGES = ("core", "ingest", "tokenize", "pack", "dataset", "preprocess", "ckpt", "train", "track")
HEAVY = ("torch", "transformers", "mlflow", "numba", "matplotlib")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, name: str, modules: set[str]) -> Iterator[str]:
    """Every module an ``import`` statement anywhere in ``path`` names (resolved: ``from a import
    b`` is ``a.b`` when that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in modules else base


def import_graph(root: Path = PACKFT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(packft module -> packft modules it imports, packft module -> outside top-level names)."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    outside: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in paths.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for target in imported_names(path, name, modules):
            if target.split(".")[0] != root.name:
                outside[name].add(target.split(".")[0])
                continue
            parts = target.split(".")
            implied = {".".join(parts[:i]) for i in range(2, len(parts))} - own
            graph[name] |= {t for t in {target, *implied} if t in modules and t != name}
    return graph, outside


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """``packft.ingest.readers`` -> ``ingest``; top-level modules are their own node."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        deps = packages.setdefault(package_of(module), set())
        deps |= {package_of(t) for t in targets if t != "packft"} - {package_of(module)}
    return packages


GRAPH, OUTSIDE = import_graph()


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    # function-level (packft imports stages on use) and TYPE_CHECKING imports are edges too
    assert "packft.tokenize.encode" in GRAPH["packft.preprocess.steps"]
    assert "packft.train.state" in GRAPH["packft.train.checkpoint"]
    assert "packft.tokenize" in GRAPH["packft.dataset.rows"]  # the package __init__ runs too


def test_the_checks_fail_on_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from pkg.b import y\n")
    (pkg / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import x\n")
    graph, outside = import_graph(pkg)
    assert cycles(graph) == [["pkg.a.x", "pkg.b"]]
    assert cycles(package_graph(graph)) == [["a", "b"]]
    assert outside["pkg.b"] == {"typing"}


def test_the_allowed_dag_is_acyclic_and_covers_every_package() -> None:
    assert cycles({k: set(v) for k, v in MAY_IMPORT.items()}) == []
    unplaced = sorted({package_of(m) for m in GRAPH} - set(MAY_IMPORT))
    assert unplaced == [], f"place these in MAY_IMPORT (the DAG): {unplaced}"
    assert sorted(p.name for p in PACKFT.iterdir() if (p / "__init__.py").exists()) == sorted(
        PACKAGES
    )


def test_no_import_cycle_between_modules() -> None:
    found = cycles(GRAPH)
    assert found == [], f"modules that import each other (directly or around a loop): {found}"


def test_no_import_cycle_between_packages() -> None:
    found = cycles(package_graph(GRAPH))
    assert found == [], f"packages that import each other (directly or around a loop): {found}"


def test_packages_import_only_earlier_stages() -> None:
    wrong = [
        f"{module} imports {target} ({package_of(module)} may import: "
        f"{', '.join(sorted(MAY_IMPORT[package_of(module)])) or 'nothing'})"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if target != "packft"
        and package_of(target) != package_of(module)
        and package_of(target) not in MAY_IMPORT[package_of(module)]
    ]
    assert wrong == []


def test_packft_never_imports_prefect_flows_or_tasks() -> None:
    wrong = {
        module: sorted(n for n in names if n.startswith("prefect") or n in ("flows", "tasks"))
        for module, names in OUTSIDE.items()
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_only_the_track_package_imports_mlflow() -> None:
    users = sorted(m for m, names in OUTSIDE.items() if "mlflow" in names)
    assert users, "the graph should see packft.track's (lazy) mlflow import"
    assert [m for m in users if not m.startswith("packft.track.")] == []


def test_cli_names_each_command_module_by_string() -> None:
    from packft.cli import COMMANDS

    for command, (module, _summary) in COMMANDS.items():
        path = PACKFT.parent / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{command}: {module} is not a module"
        defined = {
            n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)
        }
        assert {"add_arguments", "run"} <= defined, f"{command}: {module}"
        assert module not in GRAPH["packft.cli"]


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return ast.literal_eval(out.stdout.strip())


def test_pipeline_config_imports_neither_torch_nor_mlflow() -> None:
    assert _loaded_after("import packft.pipeline_config") == []


def test_every_package_init_stays_light() -> None:
    imports = ", ".join(f"packft.{p}" for p in PACKAGES)
    assert _loaded_after(f"import {imports}") == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_enters_and_leaves_and_its_api_resolves(package: str) -> None:
    module = importlib.import_module(f"packft.{package}")
    assert module.__doc__ and len(module.__doc__.split()) > 30
    assert module.__all__, f"packft.{package} has no public API"
    for name in module.__all__:
        assert getattr(module, name) is not None
