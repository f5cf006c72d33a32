"""Versioned schema: ``schema/NNN_name.sql`` applied in order, tracked in ``PRAGMA
user_version`` on SQLite (``schema_version`` on PostgreSQL, see :mod:`flm.store.pg`).

Where the dialects differ, ``schema/postgresql/NNN_name.sql`` replaces the common file of
the same version on PostgreSQL; every other file is written to run on both.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def _files(folder: str) -> dict[int, str]:
    found = {}
    base = resources.files("flm.store").joinpath(folder)
    if base.is_dir():
        for entry in base.iterdir():
            m = _NAME.match(entry.name)
            if m:
                found[int(m.group(1))] = entry.read_text()
    return found


def available(dialect: str = "sqlite") -> list[tuple[int, str]]:
    """(version, sql) of every migration shipped for ``dialect``, in order."""
    found = _files("schema")
    if dialect != "sqlite":
        found.update(_files(f"schema/{dialect}"))
    return sorted(found.items())


def statements(sql: str) -> list[str]:
    """The statements of one migration file (``;`` at a line's end separates them)."""
    return [s for s in sql.split(";\n") if s.strip()]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest version, one transaction per step; return it."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for version, sql in available():
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return current
