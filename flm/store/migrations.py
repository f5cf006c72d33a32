"""Versioned schema: ``schema/NNN_name.sql`` applied in order, tracked in ``PRAGMA user_version``."""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[int, str]]:
    """(version, sql) of every migration shipped, in order."""
    found = []
    for entry in resources.files("flm.store").joinpath("schema").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.read_text()))
    return sorted(found)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest version, one transaction per step; return it."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for version, sql in available():
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return current
