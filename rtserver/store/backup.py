"""Backups of the store file, and what an upgrade's migrations will do.

:func:`backup` makes an online, consistent copy while the server keeps writing: SQLite's backup
API copies every page in one step (``pages=-1``) inside one read transaction of a read-only
connection, so in WAL mode the writer is never held and the copy is the database as of one
commit (a stepped backup would start over whenever the writer commits). The copy is checked
with ``PRAGMA integrity_check`` before it takes its name, and is created 0600: it holds every
secret the store does.

:func:`pending_migrations` names the migrations that opening the store with this version would
apply (``rtserver migrate --check``); :class:`~rtserver.store.database.Store` backs the file up
with :func:`backup` before it applies any to a store that already holds data.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from rtserver.errors import StoreError
from rtserver.store.schema import MIGRATIONS

__all__ = ["backup", "pending_migrations"]


def _read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"no store at {str(path)!r}")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def backup(source: str | Path, target: str | Path) -> int:
    """Copy the store at ``source`` to the new file ``target`` (0600); the copy's size in
    bytes.

    Raises:
        StoreError: no store at ``source``, ``target`` exists, or the copy failed its check
            (then no ``target`` is left behind).
    """
    source, target = Path(source), Path(target)
    if target.exists():
        raise StoreError(f"{str(target)!r} exists: a backup never overwrites a file")
    partial = target.with_name(f".{target.name}.partial")
    try:
        os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        copy = sqlite3.connect(partial)
        try:
            with contextlib.closing(_read_only(source)) as store:
                store.backup(copy, pages=-1)
            (check,) = copy.execute("PRAGMA integrity_check").fetchone()
        finally:
            copy.close()
        if check != "ok":
            raise StoreError(f"the copy of {str(source)!r} failed its integrity check: {check}")
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {str(source)!r} failed: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"cannot write {str(target)!r}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target.stat().st_size


def pending_migrations(path: str | Path) -> list[str]:
    """The migrations opening the store at ``path`` would apply (all of them for a new file).

    Raises:
        StoreError: the file is not a store this version can read.
    """
    path = Path(path)
    if not path.exists():
        return [name for name, _ in MIGRATIONS]
    try:
        with contextlib.closing(_read_only(path)) as store:
            tables = {r[0] for r in store.execute("SELECT name FROM sqlite_master")}
            applied = (
                {r[0] for r in store.execute("SELECT name FROM migrations")}
                if "migrations" in tables
                else set()
            )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {str(path)!r}: {exc}") from exc
    return [name for name, _ in MIGRATIONS if name not in applied]
