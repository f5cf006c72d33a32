"""The store: SQLite through adbapi, one writer and one read-only connection (see
:mod:`flm.store.pool`), every query named and timed.

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
from flm.store.apis import _BUMP, ApiQueries, Conflict
from flm.store.backends import BackendQueries
from flm.store.keys import KeyQueries
from flm.store.migrations import migrate
from flm.store.nodes import NodeQueries
from flm.store.pool import BUSY_TIMEOUT_MS, Engine, Timings, configure_writer

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


class Store(ApiQueries, KeyQueries, BackendQueries, NodeQueries, Service):
    """SQLite through ``adbapi``; stops last, after everything that writes to it."""

    name = "store"
    purge_batch = 2000  # log rows of a deleted API per write transaction (as retention)

    def __init__(self, path: Path, *, reactor: Any = None,
                 now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._now = now
        self._engine = Engine(self.path, reactor)
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
            spans.repair(conn)
            self.opened_last_id = spans.last_id(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()
        self._engine.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._purging is not None:
            await self._purging  # the batch under way; the rest at the next start
        self._engine.close()

    def checkpoint(self) -> Deferred[Any]:
        """Move the WAL into the database and truncate it, so it stays small. Never waits
        for readers: with one still reading it does what it can (the rest next time)."""
        def txn(c: Any) -> None:
            c.execute("PRAGMA busy_timeout = 0")
            try:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return self._engine.write("wal_checkpoint", txn, begin=None)

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
        """A named write interaction inside ``BEGIN IMMEDIATE``."""
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
                c.execute(_BUMP)
            c.execute("DELETE FROM performance_metrics WHERE api_id = ?", (api_id,))
            c.execute("INSERT OR IGNORE INTO deleted_apis (api_id) VALUES (?)", (api_id,))
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
            return [r[0] for r in c.execute("SELECT api_id FROM deleted_apis ORDER BY 1")]

        def batch(c: Any, api_id: int, n: int) -> int:
            c.execute("DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs "
                      "WHERE api_id = ? LIMIT ?)", (api_id, n))
            deleted = int(c.rowcount)
            if deleted < n:
                c.execute("DELETE FROM deleted_apis WHERE api_id = ?", (api_id,))
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

    async def insert_logs(self, rows: Iterable[Sequence[Any]],
                          last_used: dict[int, float]) -> None:
        """One transaction per batch; also bumps ``last_used_at`` of the APIs in it."""
        await self._write("insert_logs", write_logs, list(rows), last_used)


def write_logs(c: Any, rows: Sequence[Sequence[Any]], last_used: dict[int, float]) -> None:
    """The body of :meth:`Store.insert_logs`, inside its write transaction.

    Few statements per batch, not ``executemany``: every statement releases and retakes
    the GIL a few times (prepare, step, reset), and under load each handoff stalls the
    reactor thread (measured: proxy throughput at c=50 fell by a quarter with
    ``executemany``). The rows of one transaction get consecutive ids (one writer), so
    the first id comes from the first statement's ``lastrowid``, not from a query.
    """
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
                  [(utc_iso(t), api_id) for api_id, t in last_used.items()])
