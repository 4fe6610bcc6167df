"""The library's import graph has no circle, and svrd/infer/ stays in small modules.

The graph is read with `ast` from every file under svrd/: module-level and function-level imports
(`import svrd.x`, `from svrd.x import y`, `from svrd import x`, relative imports) alike, since a
lazy import inside a function still ties the two modules together. The module an import names
counts (`from svrd.infer import generate` names svrd.infer and svrd.infer.generate); the parent
packages Python initialises on the way do not: a package's __init__ that imports its own
submodules (svrd/sample) is no circle, as the package is in sys.modules before they run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_stage_deps import imported_modules  # the same ast reading of a file's svrd imports

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "svrd"
MAX_INFER_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The svrd modules `path` imports (a `from pkg import name` that names a submodule counts as it)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return {m for m in imported_modules(path, package) if m in modules and m not in (PACKAGE, name)}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in sorted((REPO / PACKAGE).rglob("*.py"))}
    modules = set(files)
    return {name: imports_of(path, modules) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
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


def test_svrd_imports_form_no_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "svrd modules import each other in a circle: " + " -> ".join(cycle)


def test_the_graph_sees_function_level_imports_and_submodules():
    graph = import_graph()
    assert "svrd.infer.vllm_engine" in graph["svrd.infer.run"]  # imported inside _run_vllm
    assert {"svrd.infer.generate", "svrd.infer.stage_beam"} <= graph["svrd.infer.predict"]  # from svrd.infer import x
    assert "svrd.infer" in graph["svrd.infer.predict"]  # named by `from svrd.infer import ...`
    assert "svrd.infer" not in graph["svrd.infer.likelihood"]  # only its submodules are named
    assert "svrd.infer.sampling" in graph["svrd.prefer"]


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_infer_package_init_imports_nothing():
    tree = ast.parse((REPO / PACKAGE / "infer" / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_no_infer_module_is_over_300_lines():
    long = {p.name: n for p in sorted((REPO / PACKAGE / "infer").glob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_INFER_LINES}
    assert not long, f"svrd/infer modules over {MAX_INFER_LINES} lines: {long}"
