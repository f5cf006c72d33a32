"""The store: SQLite (:mod:`flm.store.pool`) or PostgreSQL (:mod:`flm.store.pg`) through
adbapi, behind one engine interface (:mod:`flm.store.engine`), every query named and timed.

Deleting an API answers at once; its log rows go in the background, in short write
transactions, resumed at the next start if the process stops first.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from flm.records import utc_iso
from flm.store import spans
from flm.store.apis import ApiQueries, Conflict, bump
from flm.store.backends import BackendQueries
from flm.store.engine import Engine, dialect
from flm.store.keys import KeyQueries
from flm.store.nodes import NodeQueries
from flm.store.pg import PostgresEngine, is_postgresql
from flm.store.pool import SQLiteEngine
from flm.store.timings import Timings

__all__ = ["Conflict", "LOG_COLUMNS", "Store"]

log = Logger()

LOG_COLUMNS = ("api_id", "created_at", "method", "path", "status", "queue_ms", "ttfb_ms",
               "upstream_ms", "response_ms", "bytes_in", "bytes_out", "model",
               "prompt_tokens", "completion_tokens", "request_id", "error", "key_id", "key_name",
               "backend", "attempts", "node")
_ONE_ROW = f"({', '.join('?' * len(LOG_COLUMNS))})"
# Rows per INSERT: powers of two, so a few statement texts exist (sqlite3 caches each
# prepared one: a 256-row one holds a few hundred kB) and a batch of 500 rows takes six.
# Capped by the connection's limit on variables (999 in SQLite before 3.32).
_CHUNKS = (256, 128, 64, 32, 16, 8, 4, 2, 1)


def _chunk_sizes(c: Any) -> tuple[int, ...]:
    try:
        limit = c.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except AttributeError:  # a cursor of another driver, or a plain sqlite3.Connection
        limit = getattr(c, "getlimit", lambda _: 999)(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return tuple(n for n in _CHUNKS if n * len(LOG_COLUMNS) <= limit)


def _insert_logs_sql(n: int) -> str:
    return (f"INSERT INTO request_logs ({', '.join(LOG_COLUMNS)}) VALUES "
            + ", ".join([_ONE_ROW] * n))


_INSERT_LOG = _insert_logs_sql(1)  # one row, for executemany in tools and tests


def make_engine(database: Path | str, reactor: Any = None) -> Engine:
    """``postgresql://...`` or a SQLite file (a path, or ``sqlite:PATH``)."""
    if is_postgresql(database):
        return PostgresEngine(str(database), reactor)
    return SQLiteEngine(Path(str(database).removeprefix("sqlite:")), reactor)


class Store(ApiQueries, KeyQueries, BackendQueries, NodeQueries, Service):
    """The database through ``adbapi``; stops last, after everything that writes to it."""

    name = "store"
    purge_batch = 2000  # log rows of a deleted API per write transaction (as retention)

    def __init__(self, database: Path | str, *, reactor: Any = None,
                 now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._engine = make_engine(database, reactor)
        self.path: Path | None = getattr(self._engine, "path", None)  # SQLite's file
        self.opened_last_id = 0  # the newest log row when the store opened
        self._purging: Deferred[None] | None = None
        self._stopping = False

    @property
    def timings(self) -> Timings:
        return self._engine.timings

    # lifecycle

    def startService(self) -> None:
        self.open()
        super().startService()
        self._stopping = False
        self.purge()  # APIs deleted before a stop or a crash

    def open(self) -> None:
        """Check and migrate synchronously (start-up must not race the schema), then
        start the pools."""
        def setup(c: Any) -> int:
            spans.repair(c)
            return spans.last_id(c)
        self.opened_last_id = self._engine.prepare(setup)
        self._engine.start()

    @property
    def dialect(self) -> str:
        """``'sqlite'`` or ``'postgresql'``."""
        return self._engine.dialect

    def describe(self) -> str:
        """The database, for messages (no password)."""
        return self._engine.describe()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._purging is not None:
            await self._purging  # the batch under way; the rest at the next start
        self._engine.close()

    def checkpoint(self) -> Deferred[Any]:
        """Keep the engine's own log small (SQLite's WAL; nothing on PostgreSQL)."""
        return self._engine.checkpoint()

    def write_check(self) -> Deferred[Any]:
        """A write that changes nothing: fails when the database cannot be written."""
        return self.run_write("health_write_check", self._engine.touch)

    # plumbing

    def _read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self._engine.read(name, fn, *args)

    def _write(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self._engine.write(name, fn, *args)

    def run_read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """For query modules beside this one (logs, metrics): a named read interaction on
        the read-only connection, in one snapshot."""
        return self._read(name, fn, *args)

    def run_write(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """A named write interaction in one write transaction."""
        return self._write(name, fn, *args)

    def now_iso(self) -> str:
        return utc_iso(self._now())

    # deleting APIs

    async def delete_api(self, api_id: int) -> bool:
        """Delete the API and its rollups now; its log rows go in the background."""
        def txn(c: Any) -> bool:
            c.execute("DELETE FROM apis WHERE id = ?", (api_id,))
            gone = c.rowcount > 0
            if gone:
                bump(c)
            c.execute("DELETE FROM performance_metrics WHERE api_id = ?", (api_id,))
            c.execute("INSERT INTO deleted_apis (api_id) VALUES (?) ON CONFLICT DO NOTHING",
                      (api_id,))
            return gone
        gone = await self._write("delete_api", txn)
        self.purge()
        return bool(gone)

    def purge(self) -> Deferred[None]:
        """Remove the log rows of deleted APIs (or join the removal under way)."""
        if self._purging is None:
            d = Deferred.fromCoroutine(self._purge())
            if not d.called:
                self._purging = d
            d.addErrback(lambda f: log.failure("removing a deleted API's logs failed", f))
        return self._purging if self._purging is not None else succeed(None)

    def purged(self) -> bool:
        """True when no deleted API's rows are left to remove (or removal is stopped)."""
        return self._purging is None

    async def _purge(self) -> None:
        def pending(c: Any) -> list[int]:
            return [r[0] for r in c.execute(
                "SELECT api_id FROM deleted_apis WHERE purged_at IS NULL ORDER BY 1")]

        def batch(c: Any, api_id: int, n: int) -> int:
            c.execute("DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs "
                      "WHERE api_id = ? LIMIT ?)", (api_id, n))
            deleted = int(c.rowcount)
            if deleted < n:  # the tombstone stays a day: rows still buffered are refused
                c.execute("UPDATE deleted_apis SET purged_at = ? WHERE api_id = ?",
                          (self._now(), api_id))
            return deleted
        try:
            while not self._stopping:
                ids = await self._write("purge_pending", pending)
                if not ids:
                    return
                for api_id in ids:
                    n = self.purge_batch
                    while not self._stopping and await self.run_write(
                            "purge_api_logs", batch, api_id, n) >= n:
                        pass
        finally:
            self._purging = None

    # request logs

    async def insert_logs(self, rows: Iterable[Sequence[Any]], last_used: dict[int, float],
                          batch_id: str | None = None) -> bool:
        """One transaction per batch; also bumps ``last_used_at`` of the APIs in it. With
        ``batch_id``, a batch already written (a retry after a lost commit answer) is
        skipped: False."""
        return bool(await self._write("insert_logs", write_logs, list(rows), last_used,
                                      batch_id, self._now()))


def write_logs(c: Any, rows: Sequence[Sequence[Any]], last_used: dict[int, float],
               batch_id: str | None = None, now: float = 0.0) -> bool:
    """The body of :meth:`Store.insert_logs`, inside its write transaction.

    Few statements per batch, not ``executemany``: every statement releases and retakes
    the GIL a few times (prepare, step, reset), and under load each handoff stalls the
    reactor thread (measured: proxy throughput at c=50 fell by a quarter with
    ``executemany``). The rows of one transaction get consecutive ids (one writer), so
    the first id comes from the first statement's ``lastrowid``, not from a query.
    On PostgreSQL: :func:`_copy_logs`.
    """
    if batch_id is not None:
        c.execute("INSERT INTO log_batches (id, written_at) VALUES (?, ?) "
                  "ON CONFLICT DO NOTHING", (batch_id, now))
        if c.rowcount == 0:
            return False  # written by an earlier try whose COMMIT's answer was lost
    rows = _of_stored_apis(c, rows)
    if dialect(c) == "postgresql":
        first_id = _copy_logs(c, rows)
    else:
        sizes = _chunk_sizes(c)
        first_id = i = 0
        width = len(LOG_COLUMNS)
        while i < len(rows):
            n = next(k for k in sizes if k <= len(rows) - i)
            values = [v for row in rows[i:i + n] for v in row]
            if len(values) != n * width:  # rows of an older shape: trailing columns null
                values = [v for row in rows[i:i + n]
                          for v in (*row, *(None,) * (width - len(row)))]
            c.execute(_insert_logs_sql(n), values)
            if not i:
                first_id = c.lastrowid - n + 1
            i += n
    if rows:
        spans.note(c, first_id)
    c.executemany("UPDATE apis SET last_used_at = ? WHERE id = ?",
                  [(utc_iso(t), api_id) for api_id, t in sorted(last_used.items())])
    return True


def _of_stored_apis(c: Any, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """Not the rows of a deleted API (its tombstone in ``deleted_apis``): buffered while it
    was deleted, here or on another node, they would outlive the purge of its rows."""
    ids = {row[0] for row in rows}
    if not ids:
        return rows
    gone = {r[0] for r in c.execute("SELECT api_id FROM deleted_apis WHERE api_id IN "
                                    f"({', '.join('?' * len(ids))})", list(ids))}
    return [row for row in rows if row[0] not in gone] if gone else rows


def _copy_logs(c: Any, rows: Sequence[Sequence[Any]]) -> int:
    """PostgreSQL: the batch through ``COPY FROM STDIN`` (rows formatted in C by psycopg;
    a multi-row INSERT of this size costs ~7x the CPU, its long text parsed at every
    execution). Returns a lower bound of the batch's ids: the sequence's next value read
    before (other nodes draw ids from the same sequence, so a batch's ids need not be
    consecutive; every id given after the read is above it)."""
    if not rows:
        return 0
    below = int(c.execute(_NEXT_LOG_ID).fetchone()[0])
    width = len(LOG_COLUMNS)
    with c.copy(_COPY_LOGS) as copy:
        for row in rows:
            copy.write_row(row if len(row) == width else (*row, *(None,) * (width - len(row))))
    return below


_COPY_LOGS = f"COPY request_logs ({', '.join(LOG_COLUMNS)}) FROM STDIN"
_NEXT_LOG_ID = ("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence("
                "'request_logs', 'id')::regclass), 0) + 1")
