"""The SQLite engine: one writer connection, one read-only connection, every query named
and timed.

The writer is a single connection (``cp_min=cp_max=1``): SQLite has one writer anyway,
and with more connections read-then-write updates were lost. Writes take
``BEGIN IMMEDIATE``. Admin reads go to their own read-only connection (WAL lets a reader
and the writer work at once), so a slow page of logs never holds up a log flush.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from flm.store.engine import Engine
from flm.store.migrations import migrate
from flm.store.timings import BUCKETS, QueryStat, Timings

__all__ = ["BUCKETS", "QueryStat", "SQLiteEngine", "Timings"]

SYNCHRONOUS = "FULL"  # see docs/operations.md, "Durability"
BUSY_TIMEOUT_MS = 5000


def configure_writer(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def configure_reader(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # each read interaction is one BEGIN ... COMMIT snapshot
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


class SQLiteEngine(Engine):
    """The two adbapi pools of one SQLite file; ``read`` and ``write`` run one named,
    timed interaction."""

    dialect = "sqlite"

    def __init__(self, path: Path, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.path = Path(path)

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def prepare(self, setup: Callable[[Any], Any]) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            try:
                configure_writer(conn)
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.DatabaseError as e:
                check = str(e)
            if check != "ok":
                raise RuntimeError(f"database {self.path} is damaged: {check}")
            migrate(conn)
            conn.execute("BEGIN IMMEDIATE")
            result = setup(conn)
            conn.execute("COMMIT")
            return result
        finally:
            conn.close()

    def start(self) -> None:
        kw: dict[str, Any] = {"cp_min": 1, "cp_max": 1, "check_same_thread": False}
        if self._reactor is not None:
            kw["cp_reactor"] = self._reactor
        self._writer = adbapi.ConnectionPool("sqlite3", str(self.path),
                                             cp_openfun=configure_writer, **kw)
        self._reader = adbapi.ConnectionPool("sqlite3", self.path.absolute().as_uri()
                                             + "?mode=ro", uri=True,
                                             cp_openfun=configure_reader, **kw)

    def checkpoint(self) -> Deferred[Any]:
        """Move the WAL into the database and truncate it, so it stays small. Never waits
        for readers: with one still reading it does what it can (the rest next time)."""
        def txn(c: Any) -> None:
            c.execute("PRAGMA busy_timeout = 0")
            try:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return self.write("wal_checkpoint", txn, begin=None)

    def touch(self, c: Any) -> None:
        """``user_version`` set to itself (page 1 is rewritten)."""
        version = c.execute("PRAGMA user_version").fetchone()[0]
        c.execute(f"PRAGMA user_version = {int(version)}")

    def write(self, name: str, fn: Callable[..., Any], *args: Any,
              begin: str | None = "BEGIN IMMEDIATE") -> Deferred[Any]:
        """On the writer; ``begin=None`` for what must run outside a transaction."""
        assert self._writer is not None, "store is not open"
        return self._run(self._writer, begin or "", name, fn, args)

    def _enter(self, cursor: Any, kind: str) -> Any:
        begin = "BEGIN" if kind == "read" else kind
        if begin:
            cursor.execute(begin)
        return cursor
