"""The package layers: which subsystem may import which, declared once, and no cycles.

Each package of ``rtserver`` (and each module at its root) lists the packages it may import.
The important edges are also spelled out as "never" rules, so that breaking one names the rule
and not just an edge missing from the table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rtserver"

BASE = {"errors", "clock"}
"""Imported by everything: the exception tree and the clock type."""

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "clock": set(),
    "config": BASE,
    "model": BASE,
    "store": BASE | {"model"},
    "engine": BASE | {"config", "model", "store"},
    "mail": BASE | {"config", "model", "store"},
    "hooks": BASE | {"config", "model", "store", "mail"},
    "catalog": BASE | {"config", "model", "store", "hooks"},
    "ingest": BASE | {"config", "model", "store", "engine", "mail", "hooks"},
    "sources": BASE | {"config", "model", "store", "engine", "hooks"},
    "dashboard": BASE | {"config", "model", "store"},
    "runtime": BASE
    | {"config", "model", "store", "engine", "mail", "hooks", "dashboard", "ingest", "catalog"}
    | {"sources"},
    "tools": BASE | {"config", "model", "store", "engine", "mail", "runtime", "catalog"},
    "app": BASE
    | {"config", "model", "store", "engine", "mail", "hooks", "dashboard", "ingest"}
    | {"runtime", "tools", "catalog"},
    "cli": BASE
    | {"config", "model", "store", "engine", "mail", "app", "runtime", "tools", "catalog"},
}
"""Package (or root module) -> what it may import. ``__init__`` and ``__main__`` are left out."""

IO_MODULES = {"asyncio", "socket", "time", "aiosqlite", "sqlite3", "aiosmtplib", "httpx", "os"}
"""Modules that do I/O or read a clock: a pure module imports none of them."""


def _unit(path: Path) -> str:
    """The package of a module, or the module's own name at the root."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> Iterator[tuple[str, str]]:
    """(imported module, first name it gives) for every import of ``path``, ours or not."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""


def _ours(module: str, name: str) -> str | None:
    """The package (or root module) of rtserver an import reaches, if any."""
    parts = module.split(".")
    if parts[0] != "rtserver":
        return None
    if len(parts) > 1:
        return parts[1]
    return None if name.startswith("__") else name


def _modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__")]


def _edges() -> dict[str, dict[str, set[str]]]:
    """Unit -> imported unit -> the files that import it."""
    edges: dict[str, dict[str, set[str]]] = {}
    for path in _modules():
        unit = _unit(path)
        for module, name in _imports(path):
            other = _ours(module, name)
            if other is not None and other != unit:
                where = str(path.relative_to(PACKAGE))
                edges.setdefault(unit, {}).setdefault(other, set()).add(where)
    return edges


def _imported_by(relative: str) -> set[str]:
    return {module for module, _ in _imports(PACKAGE / relative)}


def test_every_unit_is_declared() -> None:
    """Each package and root module appears in the table of allowed imports."""
    units = {_unit(p) for p in _modules()}
    assert units <= set(ALLOWED), units - set(ALLOWED)
    assert len([p for p in PACKAGE.glob("*.py")]) <= 8, "the root holds only the wiring"


def test_imports_follow_the_table() -> None:
    """No package imports one it is not allowed to."""
    wrong = [
        f"{unit} -> {other} ({', '.join(sorted(files))})"
        for unit, imported in _edges().items()
        for other, files in imported.items()
        if other not in ALLOWED[unit]
    ]
    assert wrong == []


@pytest.mark.parametrize("unit", ["model", "config"])
def test_model_and_config_import_nothing_of_ours_but_the_base(unit: str) -> None:
    """The domain model and the config stand on their own."""
    assert set(_edges().get(unit, {})) <= BASE


def _public(package: str) -> set[str]:
    """What a package's ``__init__`` lists in ``__all__``: the only names other packages use."""
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return {ast.literal_eval(element) for element in node.value.elts}  # type: ignore[attr-defined]
    return set()


def test_packages_are_used_through_their_public_names() -> None:
    """Outside a package, code imports only the package itself (never one of its modules), and
    only names its ``__init__`` lists in ``__all__`` (the httpx way of keeping the rest
    private)."""
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    wrong = []
    for path in _modules():
        unit = _unit(path)
        for module, name in _imports(path):
            parts = module.split(".")
            if parts[0] != "rtserver" or len(parts) < 2 or parts[1] not in packages:
                continue
            if parts[1] == unit:
                continue
            where = str(path.relative_to(PACKAGE))
            if len(parts) > 2:
                wrong.append(f"{where}: from {module} import {name} (a private module)")
            elif name not in _public(parts[1]):
                wrong.append(f"{where}: {name} is not in rtserver.{parts[1]}.__all__")
    assert wrong == []


def test_each_public_name_is_defined_in_its_package() -> None:
    """Every name a package's ``__all__`` lists is importable from it."""
    import importlib

    for package in sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        face = importlib.import_module(f"rtserver.{package}")
        assert [n for n in _public(package) if not hasattr(face, n)] == [], package


def test_decide_is_pure() -> None:
    """The engine's decisions never import the store, mail, webhooks, sockets or clocks."""
    imported = _imported_by("engine/decide.py")
    ours = {module.split(".")[1] for module in imported if module.startswith("rtserver.")}
    assert not ours & {"store", "mail", "hooks", "ingest", "dashboard", "runtime", "app"}
    assert not {module.split(".")[0] for module in imported} & IO_MODULES


def test_the_store_never_imports_the_engine() -> None:
    """The store keeps rows, never decisions."""
    assert "engine" not in _edges().get("store", {})


def test_the_dashboard_never_imports_the_pipeline() -> None:
    """The dashboard only reads: the store, and the counters it is handed."""
    assert "engine" not in _edges().get("dashboard", {})


def test_no_import_cycles() -> None:
    """The import graph between modules is acyclic."""
    graph: dict[str, set[str]] = {}
    for path in _modules():
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        graph[name] = set()
        for module, imported in _imports(path):
            if module.startswith("rtserver."):
                target = module.removeprefix("rtserver.")
                sub = f"{target}.{imported}"
                graph[name].add(
                    sub if (PACKAGE / (sub.replace(".", "/") + ".py")).exists() else target
                )
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path, node))
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))
        done.add(node)

    for module in graph:
        visit(module, ())
