"""The layer table of docs/architecture.md, enforced on every import the code makes.

Every ``.py`` file of the project is parsed and every ``import`` statement is
collected, wherever it sits: at module level, inside a function (a lazy
import), under ``if TYPE_CHECKING:`` or in a ``try:``. An import counts as an
edge from its file to the project module it names (``from pkg import mod``
names ``pkg/mod.py`` when that file exists).

Three rules are checked:

* each package imports only the packages below it (``ALLOWED``);
* only the composition root (``citybrain``) imports the web stack;
* no two project files import each other, directly or round a longer circle.

Run it as a script to list every offending edge::

    .venv/bin/python -m tests.unit.test_architecture
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: package -> the project packages it may import (itself always allowed).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "geo": frozenset({"core"}),
    "devices": frozenset({"core", "geo"}),
    "ingest": frozenset({"core", "devices", "geo"}),
    "alerts": frozenset({"core", "devices", "geo"}),
    "streams": frozenset({"core", "devices", "geo", "ingest", "alerts"}),
    "simulators": frozenset({"core", "devices", "geo", "ingest", "alerts"}),
    "citybrain": frozenset({"core", "devices", "geo", "ingest", "alerts", "streams", "simulators"}),
}
#: Not layers of the product: they may import anything, and nothing imports them.
TOOLS = ("tests", "bench")
PACKAGES = tuple(ALLOWED) + TOOLS

#: Third-party roots only the composition root may import.
WEB_STACK = frozenset({"fastapi", "fastapi_offline", "starlette", "uvicorn"})
WEB_ALLOWED = frozenset({"citybrain"})


@dataclass(frozen=True, slots=True)
class Edge:
    """One import statement: ``source`` (a file) imports ``target`` (a dotted name)."""

    source: Path
    line: int
    target: str

    @property
    def where(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"


def project_files() -> list[Path]:
    """Every Python file of the project's packages, tests and benchmarks."""
    out: list[Path] = []
    for pkg in PACKAGES:
        out.extend(p for p in sorted((ROOT / pkg).rglob("*.py")) if "__pycache__" not in p.parts)
    return out


def module_name(path: Path) -> str:
    """``streams/store.py`` -> ``streams.store``; ``geo/__init__.py`` -> ``geo``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_file(name: str) -> Path | None:
    """The project file a dotted module name loads, or None if it is not one."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def edges_in(source: str, module: str, *, is_package: bool, path: Path) -> Iterator[Edge]:
    """Every import in ``source`` (the text of ``module``), module-level or lazy, as absolute names."""
    tree = ast.parse(source, filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # ``from pkg import mod`` loads the module file pkg/mod.py
                targets.append(sub if module_file(sub) is not None else base)
            for target in dict.fromkeys(targets):
                yield Edge(path, node.lineno, target)
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            # importlib.import_module("pkg.mod") with a literal name is an import too.
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield Edge(path, node.lineno, arg.value)


def _is_import_module(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def imports(path: Path) -> Iterator[Edge]:
    """Every import in a project file, module-level or lazy, as absolute dotted names."""
    return edges_in(
        path.read_text(encoding="utf-8"), module_name(path), is_package=path.name == "__init__.py", path=path
    )


def top(name: str) -> str:
    return name.partition(".")[0]


def layer_violations() -> list[str]:
    """Imports that run up the table (or into tests/bench), as 'file:line: a -> b'."""
    out = []
    for path in project_files():
        src = top(module_name(path))
        for edge in imports(path):
            dst = top(edge.target)
            if dst not in PACKAGES or dst == src or src in TOOLS:
                continue
            if dst in TOOLS or dst not in ALLOWED[src]:
                out.append(f"{edge.where}: {src} imports {edge.target} ({src} may import {sorted(ALLOWED[src])})")
    return out


def web_violations() -> list[str]:
    """Imports of FastAPI/Starlette/uvicorn outside ``citybrain`` (tests and bench excepted)."""
    out: list[str] = []
    for path in project_files():
        src = top(module_name(path))
        if src in WEB_ALLOWED or src in TOOLS:
            continue
        out.extend(
            f"{e.where}: {src} imports {e.target}; only {sorted(WEB_ALLOWED)} may import the web stack"
            for e in imports(path)
            if top(e.target) in WEB_STACK
        )
    return out


def file_graph() -> dict[Path, list[Edge]]:
    """File -> its imports of other project files."""
    graph: dict[Path, list[Edge]] = {}
    for path in project_files():
        edges = []
        for edge in imports(path):
            target = module_file(edge.target)
            if target is not None and target != path:
                edges.append(edge)
        graph[path] = edges
    return graph


def cycles() -> list[list[Edge]]:
    """One circle per strongly connected group of files, as the edges that close it."""
    graph = file_graph()
    succ: dict[Path, list[Path]] = {
        p: sorted({f for e in es if (f := module_file(e.target)) is not None}) for p, es in graph.items()
    }
    # Tarjan's algorithm, iterative so deep chains don't hit the recursion limit.
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    groups: list[list[Path]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[Path, Iterator[Path]]] = [(root, iter(succ[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(succ.get(nxt, []))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
    out = []
    for group in groups:
        members = set(group)
        out.append(
            [
                e
                for p in sorted(group)
                for e in graph[p]
                if module_file(e.target) in members and module_file(e.target) != p
            ]
        )
    return out


def describe_cycles() -> list[str]:
    lines = []
    for circle in cycles():
        files = sorted({str(e.source.relative_to(ROOT)) for e in circle})
        lines.append("circle between " + " , ".join(files) + ":")
        lines.extend(f"    {e.where}: imports {e.target}" for e in circle)
    return lines


def test_every_package_imports_only_the_layers_below_it() -> None:
    bad = layer_violations()
    assert not bad, "imports against the layer table (docs/architecture.md):\n" + "\n".join(bad)


def test_only_the_composition_root_imports_the_web_stack() -> None:
    bad = web_violations()
    assert not bad, "\n".join(bad)


def test_no_import_circles_between_files() -> None:
    bad = describe_cycles()
    assert not bad, "import circles (lazy imports count):\n" + "\n".join(bad)


def test_the_walker_sees_lazy_relative_type_checking_and_dynamic_imports() -> None:
    # The checks above are only as good as the walker: an import inside a
    # function, under TYPE_CHECKING, or relative must all come out as edges.
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import downstream\n"
        "from .store import StoreSink\n"
        "if TYPE_CHECKING:\n"
        "    from citybrain.settings import Settings\n"
        "def f():\n"
        "    import fastapi\n"
        "    from geo import grid, GridSpec\n"
        "    importlib.import_module('alerts.rules')\n"
    )
    path = ROOT / "streams" / "probe.py"
    got = {(e.line, e.target) for e in edges_in(source, "streams.probe", is_package=False, path=path)}
    assert got == {
        (1, "typing"),
        (2, "streams.downstream"),
        (3, "streams.store"),
        (5, "citybrain.settings"),
        (7, "fastapi"),
        (8, "geo.grid"),
        (8, "geo"),
        (9, "alerts.rules"),
    }, got


def test_the_stream_worker_and_gateway_load_neither_the_web_stack_nor_the_composition_root() -> None:
    # The static checks see the project's own imports; this one also sees what
    # third-party libraries pull in when the worker and the gateway are imported.
    code = (
        "import sys\n"
        "import streams.app, streams.pipeline, ingest.gateway, alerts.engine\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'citybrain', 'fastapi', 'starlette', 'uvicorn'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)


if __name__ == "__main__":
    problems = layer_violations() + web_violations() + describe_cycles()
    print("\n".join(problems) or "no offending imports")
    sys.exit(1 if problems else 0)
