"""The import layers of STYLE.md: a module imports its own layer or lower ones, never higher,
and there are no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtserver"

LAYERS = {
    "errors": 0,
    "config.schema": 0,
    "model.events": 0,
    "model.facts": 0,
    "model.actions": 0,
    "engine.memory": 1,
    "mail.transport": 1,
    "mail.tokens": 0,
    "dashboard.latency": 0,
    "hooks.signatures": 0,
    "config.settings": 0,
    "model.people": 1,
    "engine.conditions": 1,
    "engine.definitions": 1,
    "engine.decide": 1,
    "engine.timers": 1,
    "store.schema": 1,
    "store.changes": 1,
    "store.writer": 1,
    "store.outbox": 1,
    "store.database": 1,
    "mail.render": 1,
    "mail.smtp": 1,
    "mail.mime": 1,
    "mail.clicks": 1,
    "mail.recommend": 1,
    "mail.sink": 1,
    "dashboard.funnel": 1,
    "mail.feedback": 1,
    "mail.providers": 1,
    "engine.rules": 1,
    "hooks.destinations": 0,
    "store.deliveries": 1,
    "engine.engine": 2,
    "hooks.sender": 2,
    "mail.contexts": 1,
    "mail.sender": 2,
    "engine.pipeline": 2,
    "dashboard.hub": 2,
    "dashboard.alerts": 2,
    "ingest.websocket": 3,
    "ingest.segment": 3,
    "dashboard.routes": 3,
    "dashboard.board": 3,
    "dashboard.auth": 3,
    "dashboard.metrics": 3,
    "mail.links": 3,
    "tools.demo": 3,
    "ingest.snippet": 3,
    "ingest.webhooks": 3,
    "app": 4,
    "tools.simulate": 4,
    "cli": 5,
    "tools.mail": 5,
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rtserver"):
            parts = node.module.split(".")
            if len(parts) > 2:
                found.add(".".join(parts[1:3]))
            elif len(parts) == 2 and parts[1] in ("app", "cli", "errors"):
                found.add(parts[1])
            else:
                prefix = ".".join(parts[1:])
                found.update(
                    f"{prefix}.{alias.name}" if prefix else alias.name for alias in node.names
                )
        elif isinstance(node, ast.Import):
            found.update(
                ".".join(a.name.split(".")[1:3])
                for a in node.names
                if a.name.startswith("rtserver.")
            )
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
        for p in PACKAGE.rglob("*.py")
        if p.stem not in ("__init__", "__main__")
    }
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
