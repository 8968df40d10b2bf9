"""The rooms stay rooms: import rules between engine, db and dashboard, checked on the source.

- db imports neither engine nor dashboard; engine imports neither dashboard nor streamlit;
- outside engine/cli, nothing imports engine.cli (the command line is a leaf);
- dashboard pages (dashboard/views) never import db; in the dashboard only the dashboard/store
  package imports db at run time (the one door to the store: the only place opening sessions);
- pages (dashboard/views, app.py, ui.py, sections.py) use only pure engine helpers: no engine
  module they reach, however indirectly, imports db;
- no import cycle anywhere, lazy (function-level) imports included.
Imports under `if TYPE_CHECKING:` are annotations only and are left out. Relative imports
(`from ..db import queries`) are resolved to the module they name.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("engine", "db", "dashboard")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: dict[str, Path], name: str | None = None, source: str | None = None) -> set[str]:
    """Every module this file imports (top level and inside functions), by its full name;
    `name` (the module's own, for relative imports) defaults to the file's."""
    found: set[str] = set()
    name = name if name is not None else _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def absolute(node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module
        base = package[:len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and (child.module or child.level):
                target = absolute(child)
                for a in child.names:  # `from engine import jobs` imports the module engine.jobs
                    sub = f"{target}.{a.name}" if target else a.name
                    found.add(sub if sub in modules or not target else target)
            visit(child)

    visit(ast.parse(path.read_text() if source is None else source, filename=str(path)))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _sources()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _breaking(graph, importer: str, imported: str) -> list[str]:
    return sorted(f"{a} imports {b}" for a, deps in graph.items() if _under(a, importer)
                  for b in deps if _under(b, imported))


def test_the_store_imports_neither_engine_nor_dashboard(graph):
    assert _breaking(graph, "db", "engine") + _breaking(graph, "db", "dashboard") == []


def test_the_engine_imports_neither_dashboard_nor_streamlit(graph):
    assert _breaking(graph, "engine", "dashboard") + _breaking(graph, "engine", "streamlit") == []


def test_nothing_outside_the_command_line_imports_it(graph):
    assert [b for b in _breaking(graph, "", "engine.cli") if not b.startswith("engine.cli")] == []


def test_pages_never_import_the_store_and_only_dashboard_store_does(graph):
    pages = [m for m in graph if _under(m, "dashboard.views")]
    assert pages, "no dashboard pages found: the check would pass vacuously"
    assert _breaking(graph, "dashboard.views", "db") == []
    door = sorted({b.split(" imports ")[0] for b in _breaking(graph, "dashboard", "db")})
    assert door and all(_under(m, "dashboard.store") for m in door), door  # the door is one package


PAGES = ("dashboard.views", "dashboard.app", "dashboard.ui", "dashboard.sections")


def _db_through_engine(graph: dict[str, set[str]]) -> list[str]:
    """For each page module reaching db through engine modules (or other pages), the chain of
    imports, e.g. "dashboard.views.x -> engine.export -> db.queries". dashboard.store is the door
    and is not followed; engine modules are, whatever imports they make (lazy ones too)."""
    found = []
    for page in sorted(m for m in graph if any(_under(m, p) for p in PAGES)):
        came_from, todo = {page: None}, [page]
        while todo:
            v = todo.pop(0)
            for w in sorted(graph.get(v, ())):
                if w in came_from:
                    continue
                came_from[w] = v
                if _under(w, "db"):
                    chain = [w]
                    while came_from[chain[-1]] is not None:
                        chain.append(came_from[chain[-1]])
                    found.append(" -> ".join(reversed(chain)))
                elif w in graph and (_under(w, "engine") or any(_under(w, p) for p in PAGES)):
                    todo.append(w)
    return found


def test_pages_use_only_pure_engine_helpers(graph):
    """No engine module a page imports, directly or through other engine modules, imports db."""
    assert [m for m in graph if any(_under(m, p) for p in PAGES[1:])], "app/ui/sections not found"
    assert _db_through_engine(graph) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import): Tarjan."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
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
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_the_checks_can_fail():
    """The rules above catch what they claim to: a planted edge is reported."""
    planted = {"engine.jobs": {"engine.cli"}, "engine.cli": {"engine.jobs"}, "db.queries": {"engine.jobs"},
               "dashboard.views.runs": {"db.queries"}, "dashboard.store": {"db.queries"}}
    assert _cycles(planted) == [["engine.cli", "engine.jobs"]]
    assert _breaking(planted, "db", "engine") == ["db.queries imports engine.jobs"]
    assert _breaking(planted, "dashboard.views", "db") == ["dashboard.views.runs imports db.queries"]
    assert [b for b in _breaking(planted, "", "engine.cli") if not b.startswith("engine.cli")] == [
        "engine.jobs imports engine.cli"]
    found = _imports(Path(__file__), _sources())  # this file imports tests.conftest and pytest
    assert {"pytest", "tests.conftest"} <= found
    # a page reaching db only through engine modules (a lazy import among them) is caught; the
    # door (dashboard.store) is not followed
    planted = {"dashboard.views.map": {"engine.a", "dashboard.store"}, "engine.a": {"engine.b"},
               "engine.b": {"db.queries"}, "dashboard.store": {"db.queries"}, "dashboard.ui": {"engine.b"}}
    assert _db_through_engine(planted) == ["dashboard.ui -> engine.b -> db.queries",
                                           "dashboard.views.map -> engine.a -> engine.b -> db.queries"]
    assert _db_through_engine({"dashboard.views.map": {"dashboard.store"}, "dashboard.store": {"db.queries"}}) == []


def test_relative_imports_are_resolved():
    modules = _sources()
    page = ROOT / "dashboard" / "views" / "review.py"
    source = "from ...db import queries\nfrom ..store import actions\nfrom . import runs\nfrom .. import ui\n" \
             "def f():\n    from ...engine.export import export_run\n"
    found = _imports(page, modules, source=source)
    assert {"db.queries", "dashboard.store.actions", "dashboard.views.runs", "dashboard.ui", "engine.export"} <= found
    init = ROOT / "dashboard" / "store" / "__init__.py"
    assert "dashboard.store.sessions" in _imports(init, modules, source="from .sessions import read\n")
    graph = {n: _imports(p, modules) for n, p in modules.items()}
    graph["dashboard.views.review"] = found
    assert "dashboard.views.review imports db.queries" in _breaking(graph, "dashboard.views", "db")


def test_engine_does_not_import_streamlit_when_run():
    """The same at run time: importing every engine module leaves streamlit out."""
    names = sorted(m for m in _sources() if _under(m, "engine") and not m.endswith("__main__"))
    code = f"import importlib, sys; [importlib.import_module(m) for m in {names!r}]; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # and the check itself can fail: importing the dashboard does pull streamlit in
    code = "import sys, streamlit; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
