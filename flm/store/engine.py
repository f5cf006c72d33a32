"""What the store asks of a database engine, so one :class:`~flm.store.db.Store` runs on
SQLite (:mod:`flm.store.pool`) or PostgreSQL (:mod:`flm.store.pg`).

Query code is written once: ``?`` placeholders, portable SQL (``ON CONFLICT``,
``RETURNING``, ``CASE`` instead of two-argument ``min``/``max``), and a cursor whose
``execute`` returns itself. What differs between the engines (checking the file, the WAL,
the version of the schema, a write that changes nothing) is a method here.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any, Callable

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed

from flm.store.timings import Timings


def dialect(c: Any) -> str:
    """``'sqlite'`` or ``'postgresql'``: what a cursor handed to a query speaks."""
    return getattr(c, "dialect", "sqlite")


def integrity_error(e: BaseException) -> bool:
    """A constraint said no (unique, foreign key, not null), on either engine."""
    return isinstance(e, sqlite3.IntegrityError) or str(
        getattr(e, "sqlstate", "") or "").startswith("23")


def unique_columns(e: BaseException) -> str:
    """``'table.col, table.col'`` of the UNIQUE constraint ``e`` broke, as SQLite names
    them (PostgreSQL's detail is turned into the same text); ``''`` for anything else."""
    if isinstance(e, sqlite3.IntegrityError):
        m = re.search(r"UNIQUE constraint failed: (.*)", str(e))
        return m.group(1) if m else ""
    diag = getattr(e, "diag", None)
    if getattr(e, "sqlstate", None) != "23505" or diag is None:
        return ""
    m = re.search(r"Key \((.*?)\)=", diag.message_detail or "")
    if not m:
        return ""
    return ", ".join(f"{diag.table_name}.{col.strip()}" for col in m.group(1).split(","))


class Engine:
    """Two kinds of interaction, both named and timed (:class:`Timings`): ``read`` (a
    snapshot, never writes) and ``write`` (a transaction that keeps read-then-write
    updates correct). Subclasses open the pools in ``start`` and say how a transaction
    begins in ``_enter``."""

    dialect = "sqlite"

    def __init__(self, reactor: Any = None) -> None:
        self.timings = Timings()
        self._reactor = reactor
        self._writer: adbapi.ConnectionPool | None = None
        self._reader: adbapi.ConnectionPool | None = None

    def describe(self) -> str:
        """The database, for messages (never a password)."""
        raise NotImplementedError

    def prepare(self, setup: Callable[[Any], Any]) -> Any:
        """At start, synchronously (start-up must not race the schema): check the
        database, migrate it, then ``setup(cursor)`` in one write transaction."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def pools(self) -> list[adbapi.ConnectionPool]:
        return [p for p in (self._writer, self._reader) if p is not None]

    def close(self) -> None:
        for pool in self.pools():
            pool.close()
        self._writer = self._reader = None

    def checkpoint(self) -> Deferred[Any]:
        """Keep the engine's own log small, if it has one to keep (SQLite's WAL)."""
        return succeed(None)

    def touch(self, c: Any) -> None:
        """Inside a write transaction: a write that changes nothing (the health check)."""
        raise NotImplementedError

    def read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert self._reader is not None, "store is not open"
        return self._run(self._reader, "read", name, fn, args)

    def write(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert self._writer is not None, "store is not open"
        return self._run(self._writer, "write", name, fn, args)

    def _enter(self, cursor: Any, kind: str) -> Any:
        """Begin the transaction of ``kind`` on ``cursor``; return the cursor for ``fn``."""
        raise NotImplementedError

    def _run(self, pool: adbapi.ConnectionPool, kind: str, name: str,
             fn: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        queued = time.perf_counter()
        started: list[float] = []

        def txn(cursor: Any, *a: Any) -> Any:
            started.append(time.perf_counter())
            return fn(self._enter(cursor, kind), *a)

        def timed(result: Any) -> Any:
            end = time.perf_counter()
            begun = started[0] if started else end
            self.timings.observe(name, begun - queued, end - begun)
            return result
        return pool.runInteraction(txn, *args).addBoth(timed)
