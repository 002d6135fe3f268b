"""The house: no import cycles among our modules, and every import runs the way the package docstrings say.

Every import counts, at module level, inside functions and under `if TYPE_CHECKING:`: a cycle hidden in a
function is still two modules that need each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: which parts each part may import (its own always included); see the docstring of `app/__init__.py`
ALLOWED = {
    "queues": set(),
    "base": {"queues"},
    "store": {"base", "queues"},
    "runtime": {"base", "queues", "store"},
    "scheduling": {"base", "queues", "store", "runtime"},
    "alerts": {"base", "queues", "store", "runtime", "scheduling"},
    "local": {"base", "queues", "store", "runtime", "scheduling"},
    "web": {"base", "queues", "store", "runtime", "scheduling", "alerts"},
    "cli": {"base", "queues", "store", "runtime", "scheduling", "alerts", "local", "web"},
    "handlers": {"base", "queues", "store", "runtime", "scheduling"},
}
SUBPACKAGES = ("store", "runtime", "scheduling", "alerts", "local", "web", "cli")
#: earlier import paths kept for code written against them: each only re-exports the module that now owns its names
OLD_PATHS = {"app.enqueue": "app.runtime.enqueue"}
#: most modules directly in app/ (the base), __init__ not counted
MAX_BASE_MODULES = 10


def our_modules(root: Path = ROOT) -> dict[str, Path]:
    files = [*root.glob("app/**/*.py"), *root.glob("workers/*.py"), root / "queues.py"]
    modules = {}
    for path in files:
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of our modules, wherever in the file they are."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(_resolve(alias.name, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else _resolve(base, modules))
        targets.discard(None)
        targets.discard(name)
        graph[name] = targets
    return graph


def part(module: str) -> str:
    if module == "queues":
        return "queues"
    if module.startswith("workers"):
        return "handlers"
    pieces = module.split(".")
    if len(pieces) > 1 and pieces[1] in SUBPACKAGES:
        return pieces[1]
    return "base"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(our_modules())


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_imports_run_the_documented_direction(graph):
    wrong = sorted(
        f"{module} ({part(module)}) imports {target} ({part(target)})"
        for module, targets in graph.items()
        for target in targets
        if part(target) != part(module) and part(target) not in ALLOWED[part(module)] and module not in OLD_PATHS
    )
    assert wrong == []


def test_an_earlier_import_path_only_re_exports_its_new_home(graph):
    for old, new in OLD_PATHS.items():
        assert graph[old] == {new}
        body = ast.parse(our_modules()[old].read_text()).body
        assert all(isinstance(node, ast.Expr | ast.ImportFrom | ast.Assign) for node in body), old


def test_every_part_says_what_it_owns_and_may_import():
    for name in SUBPACKAGES:
        docstring = ast.get_docstring(ast.parse((ROOT / "app" / name / "__init__.py").read_text())) or ""
        assert "import" in docstring, f"app/{name}/__init__.py must say what it may import"
    base = [p for p in (ROOT / "app").glob("*.py") if p.name != "__init__.py" and f"app.{p.stem}" not in OLD_PATHS]
    assert len(base) <= MAX_BASE_MODULES, sorted(p.name for p in base)


def test_every_package_is_installed():
    """A wheel holds the packages pyproject.toml lists: each of ours must be there (the editable install hides a
    missing one)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in ROOT.glob("app/**/__init__.py")}
    assert found | {"workers"} == listed


def test_the_checks_find_a_cycle_and_a_wrong_way_import(tmp_path):
    """The two rules above can fail: a planted cycle and a runtime module importing the web are both caught."""
    for package in ("app", "app/runtime", "app/web", "workers"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "queues.py").write_text("")
    (tmp_path / "app/runtime/a.py").write_text("def f():\n    from app.runtime import b\n")
    (tmp_path / "app/runtime/b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                               "    from app.runtime.a import f\nimport app.web.pages\n")
    (tmp_path / "app/web/pages.py").write_text("")
    planted = import_graph(our_modules(tmp_path))
    assert cycles(planted) == [["app.runtime.a", "app.runtime.b"]]
    assert "app.web.pages" in planted["app.runtime.b"] and "web" not in ALLOWED["runtime"]
