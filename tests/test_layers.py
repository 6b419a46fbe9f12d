"""The import layers of STYLE.md: a module imports its own layer or lower ones, never higher,
and there are no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtserver"

LAYERS = {
    "errors": 0,
    "config": 0,
    "events": 0,
    "facts": 0,
    "tokens": 0,
    "latency": 0,
    "signatures": 0,
    "settings": 0,
    "people": 1,
    "conditions": 1,
    "definitions": 1,
    "workflows": 1,
    "timers": 1,
    "_schema": 1,
    "_changes": 1,
    "_writer": 1,
    "_outbox": 1,
    "store": 1,
    "mailer": 1,
    "relay": 1,
    "mime": 1,
    "clicks": 1,
    "recommend": 1,
    "sink": 1,
    "funnel": 1,
    "feedback": 1,
    "providers": 1,
    "rules": 1,
    "destinations": 0,
    "_deliveries": 1,
    "actions": 2,
    "courier": 2,
    "contexts": 1,
    "sender": 2,
    "pipeline": 2,
    "hub": 2,
    "alerts": 2,
    "ingest": 3,
    "tracking": 3,
    "dashboard": 3,
    "board": 3,
    "auth": 3,
    "metrics": 3,
    "links": 3,
    "demo": 3,
    "snippet": 3,
    "webhooks": 3,
    "app": 4,
    "simulation": 4,
    "cli": 5,
    "mailcli": 5,
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rtserver"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("rtserver."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return {name: _imports(path) - {"__version__"} for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    """Each module of the package is placed in the layer table."""
    assert set(_graph()) <= set(LAYERS), set(_graph()) - set(LAYERS)


def test_imports_point_down() -> None:
    """No module imports a module of a higher layer."""
    for module, imported in _graph().items():
        for other in imported:
            assert LAYERS[other] <= LAYERS[module], f"{module} imports higher {other}"


def test_no_import_cycles() -> None:
    """The import graph is acyclic."""
    graph = _graph()
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
