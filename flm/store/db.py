"""The store: one SQLite connection behind adbapi, every query named.

One connection (``cp_min=cp_max=1``): SQLite has one writer anyway, and with more
connections read-then-write updates were lost. Writes take ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from flm.periodic import PeriodicService
from flm.store.migrations import migrate
from flm.store.records import API_FIELDS, ApiRecord, utc_iso

log = Logger()

_API_COLUMNS = ", ".join(API_FIELDS)
LOG_COLUMNS = ("api_id", "created_at", "method", "path", "status", "queue_ms", "ttfb_ms",
               "upstream_ms", "response_ms", "bytes_in", "bytes_out", "model",
               "prompt_tokens", "completion_tokens", "request_id", "error")
_ONE_ROW = f"({', '.join('?' * len(LOG_COLUMNS))})"
# Rows per INSERT: powers of two up to 32 (512 variables: under SQLite's 999 limit of
# old versions), so at most six statement texts exist and a batch of 500 rows takes 20.
_CHUNKS = (32, 16, 8, 4, 2, 1)


def _chunk_size(left: int) -> int:
    return next(n for n in _CHUNKS if n <= left)


def _insert_logs_sql(n: int) -> str:
    return (f"INSERT INTO request_logs ({', '.join(LOG_COLUMNS)}) VALUES "
            + ", ".join([_ONE_ROW] * n))


_INSERT_LOG = _insert_logs_sql(1)  # one row, for executemany in tools and tests


class Conflict(Exception):
    """A unique field (``name``, ``port``) is taken; ``field`` says which."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is taken")
        self.field = field


def _configure(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")


def _record(row: Sequence[Any]) -> ApiRecord:
    values = list(row)
    for flag in ("allow_unknown_model", "insecure"):
        values[API_FIELDS.index(flag)] = bool(values[API_FIELDS.index(flag)])
    return ApiRecord(*values)


def _conflict(e: sqlite3.IntegrityError) -> Exception:
    text = str(e)
    for field in ("name", "port"):
        if f"apis.{field}" in text:
            return Conflict(field)
    return e


class Store(Service):
    """SQLite through ``adbapi``; stops last, after everything that writes to it."""

    name = "store"

    def __init__(self, path: Path, *, reactor: Any = None,
                 now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._reactor = reactor
        self._now = now
        self._pool: adbapi.ConnectionPool | None = None

    # lifecycle

    def startService(self) -> None:
        self.open()
        super().startService()

    def checkpoint(self) -> Deferred[Any]:
        """Move the WAL into the database and truncate it, so it stays small."""
        def txn(c: Any) -> None:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self._read("wal_checkpoint", txn)

    def open(self) -> None:
        """Migrate synchronously (start-up must not race the schema), then start the pool."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            _configure(conn)
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise RuntimeError(f"database {self.path} is damaged: {check}")
            migrate(conn)
        finally:
            conn.close()
        kw: dict[str, Any] = {}
        if self._reactor is not None:
            kw["cp_reactor"] = self._reactor
        self._pool = adbapi.ConnectionPool(
            "sqlite3", str(self.path), cp_min=1, cp_max=1, check_same_thread=False,
            cp_openfun=_configure, **kw)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        return succeed(None)

    # plumbing

    def _read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert self._pool is not None, "store is not open"
        return self._pool.runInteraction(fn, *args)

    def _write(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        def txn(cursor: Any, *a: Any) -> Any:
            cursor.execute("BEGIN IMMEDIATE")
            return fn(cursor, *a)
        assert self._pool is not None, "store is not open"
        return self._pool.runInteraction(txn, *args)

    def now_iso(self) -> str:
        return utc_iso(self._now())

    # APIs

    async def create_api(self, fields: dict[str, Any]) -> ApiRecord:
        now = self.now_iso()
        row = {"insecure": False, "tls_cert": None, "tls_key": None,
               **fields, "created_at": now, "updated_at": now, "last_used_at": None,
               "status_reason": fields.get("status_reason")}
        cols = [c for c in API_FIELDS if c != "id"]

        def txn(c: Any) -> ApiRecord:
            try:
                c.execute(f"INSERT INTO apis ({', '.join(cols)}) VALUES "
                          f"({', '.join('?' * len(cols))})", [row[k] for k in cols])
            except sqlite3.IntegrityError as e:
                raise _conflict(e) from None
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE id = ?", (c.lastrowid,))
            return _record(c.fetchone())
        return await self._write("create_api", txn)

    async def get_api(self, ref: int | str) -> ApiRecord | None:
        """By id (an int or a string of digits) or by name."""
        column = "id" if isinstance(ref, int) or ref.isdigit() else "name"

        def txn(c: Any) -> ApiRecord | None:
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE {column} = ?", (ref,))
            row = c.fetchone()
            return _record(row) if row else None
        return await self._read("get_api", txn)

    async def list_apis(self, *, limit: int, after_id: int = 0,
                        status: str | None = None) -> tuple[list[ApiRecord], int]:
        """One page ordered by id, and the total matching the filter."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])

        def txn(c: Any) -> tuple[list[ApiRecord], int]:
            page_where = f"{where} {'AND' if where else 'WHERE'} id > ?"
            c.execute(f"SELECT {_API_COLUMNS} FROM apis {page_where} ORDER BY id LIMIT ?",
                      [*args, after_id, limit])
            items = [_record(r) for r in c.fetchall()]
            c.execute(f"SELECT count(*) FROM apis {where}", args)
            return items, c.fetchone()[0]
        return await self._read("list_apis", txn)

    async def apis_to_run(self) -> list[ApiRecord]:
        """APIs that were running (or failed to) when the service last stopped."""
        def txn(c: Any) -> list[ApiRecord]:
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE status IN ('running', 'error') "
                      "ORDER BY id")
            return [_record(r) for r in c.fetchall()]
        return await self._read("apis_to_run", txn)

    async def used_ports(self) -> set[int]:
        def txn(c: Any) -> set[int]:
            c.execute("SELECT port FROM apis")
            return {r[0] for r in c.fetchall()}
        return await self._read("used_ports", txn)

    async def update_api(self, api_id: int, fields: dict[str, Any]) -> ApiRecord | None:
        """Change fields (also ``status``, ``key_hash``...); None if the API is gone."""
        fields = {**fields, "updated_at": self.now_iso()}
        assignments = ", ".join(f"{k} = ?" for k in fields)

        def txn(c: Any) -> ApiRecord | None:
            try:
                c.execute(f"UPDATE apis SET {assignments} WHERE id = ?",
                          [*fields.values(), api_id])
            except sqlite3.IntegrityError as e:
                raise _conflict(e) from None
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE id = ?", (api_id,))
            row = c.fetchone()
            return _record(row) if row else None
        return await self._write("update_api", txn)

    async def delete_api(self, api_id: int, batch: int = 5000) -> bool:
        """Delete the API and its metrics at once, then its logs in short transactions."""
        def txn(c: Any) -> bool:
            c.execute("DELETE FROM apis WHERE id = ?", (api_id,))
            gone = c.rowcount > 0
            c.execute("DELETE FROM performance_metrics WHERE api_id = ?", (api_id,))
            return gone

        def logs_txn(c: Any) -> int:
            c.execute("DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs "
                      "WHERE api_id = ? LIMIT ?)", (api_id, batch))
            return c.rowcount
        gone = await self._write("delete_api", txn)
        while await self._write("delete_api_logs", logs_txn) >= batch:
            pass
        return gone

    # request logs

    async def insert_logs(self, rows: Iterable[Sequence[Any]],
                          last_used: dict[int, float]) -> None:
        """One transaction per batch; also bumps ``last_used_at`` of the APIs in it."""
        rows = list(rows)

        def txn(c: Any) -> None:
            # One statement per chunk of rows, not executemany: that releases and retakes
            # the GIL once per row, and under load each handoff stalls the reactor thread
            # (measured: proxy throughput at c=50 fell by a quarter with logging on).
            # Chunks of a few fixed sizes: each size is one prepared statement that
            # sqlite3 caches, and a cached 500-row INSERT holds ~1 MB.
            i = 0
            while i < len(rows):
                n = _chunk_size(len(rows) - i)
                chunk = rows[i:i + n]
                c.execute(_insert_logs_sql(n), [v for row in chunk for v in row])
                i += n
            c.executemany("UPDATE apis SET last_used_at = ? WHERE id = ?",
                          [(utc_iso(t), api_id) for api_id, t in last_used.items()])
        await self._write("insert_logs", txn)

    def run_read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """For query modules beside this one (logs, metrics): a named read interaction."""
        return self._read(name, fn, *args)

    def run_write(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """A named write interaction inside ``BEGIN IMMEDIATE``."""
        return self._write(name, fn, *args)


class WalCheckpoints(PeriodicService):
    """Checkpoints the store's WAL every few minutes."""

    name = "wal_checkpoints"

    def __init__(self, store: Store, clock: Any, interval: float = 300.0) -> None:
        super().__init__(clock, interval)
        self._store = store

    def tick(self) -> Deferred[Any]:
        return self._store.checkpoint()
