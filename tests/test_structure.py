"""Project structure: one version string, no import cycles between the project's modules."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from protocol.version import __version__

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "broker", "control", "bridges")


def test_pyproject_carries_the_one_version_string():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == __version__


def test_every_process_reports_that_version():
    import broker
    from control.views import health
    assert broker.__version__ == __version__ and health.VERSION == __version__


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _module_level(tree: ast.AST):
    """Every node outside function bodies (imports inside a function run only when called)."""
    for child in ast.iter_child_nodes(tree):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _module_level(child)


def _imports(path: Path, package: str) -> set[str]:
    """Project modules imported at module level (TYPE_CHECKING blocks included)."""
    out = set()
    for node in _module_level(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if _is_module(sub) else base)
    return {m for m in out if m.split(".")[0] in PACKAGES and _is_module(m)}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = _module_name(path)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            graph[name] = _imports(path, package)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_project_modules():
    graph = _graph()
    assert "broker.server" in graph and "broker.handlers" in graph["broker.server"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
