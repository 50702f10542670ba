"""The layout keeps its shape: no import cycle inside the package (function-level
imports included, ``TYPE_CHECKING`` blocks not), the framework-free core
imports no Flask, and modules and functions stay small (issue #14)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flask_modelguard"

#: Modules that import nothing from Flask (DESIGN.md's core and storage layers).
FRAMEWORK_FREE = (
    "alerting", "alerts", "events", "features", "keys", "lifecycle", "models", "monitor", "ownership",
    "payload", "persistence", "pipeline", "policy", "quotas", "repository", "resident", "sealing", "sketch", "spill", "state",
    "stats", "training", "transforms", "windows", "worker", "detectors.add", "detectors.anomaly", "detectors.frechet",
    "detectors.population", "detectors.prada", "detectors.registry", "detectors.supervised", "detectors.window",
    "repository.accounts", "repository.base", "repository.detection", "repository.events", "repository.groups",
    "collusion", "detectors.groups", "transforms.base",
    "transforms.deception", "transforms.policy", "transforms.shaping",
)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    """Every package module a module imports, wherever the import statement is."""

    def __init__(self, name: str, is_package: bool) -> None:
        self.package = name.split(".") if is_package else name.split(".")[:-1]
        self.found: set[str] = set()
        self.broken: set[str] = set()  # relative imports of modules that do not exist

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names if alias.name in MODULES)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.package[: len(self.package) - node.level + 1] if node.level else []
        prefix = ".".join(base + ([node.module] if node.module else []))
        for alias in node.names:
            full = f"{prefix}.{alias.name}"
            if full in MODULES:
                self.found.add(full)  # `from . import lifecycle`: the module, not the package
            elif prefix in MODULES:
                self.found.add(prefix)
            elif node.level:
                self.broken.add(full)


def _visited() -> dict[str, _Imports]:
    visited = {}
    for name, path in MODULES.items():
        visited[name] = _Imports(name, path.name == "__init__.py")
        visited[name].visit(ast.parse(path.read_text()))
    return visited


def _graph() -> dict[str, set[str]]:
    return {name: visitor.found - {name} for name, visitor in _visited().items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (depth-first search, colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    graph = _graph()
    assert graph["flask_modelguard.runtime"] >= {"flask_modelguard.serving", "flask_modelguard.pipeline"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_every_relative_import_names_a_module_that_exists() -> None:
    """Function-level imports too: one of a moved module fails only when it runs."""
    broken = {name: sorted(v.broken) for name, v in _visited().items() if v.broken}
    assert not broken, broken


@pytest.mark.parametrize("module", FRAMEWORK_FREE)
def test_the_core_imports_no_flask(module: str) -> None:
    tree = ast.parse(MODULES[f"flask_modelguard.{module}"].read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and not node.level}
    assert not imported & {"flask", "werkzeug"}, module


def test_modules_stay_small() -> None:
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_functions_fit_on_a_screen() -> None:
    long = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = lines
    assert not long, long
