"""The PostgreSQL engine: psycopg 3 through ``adbapi``, a small pool of writers and a pool
of read-only snapshot readers, every query named and timed (as :mod:`flm.store.pool`).

Writes run at READ COMMITTED: every read-then-write of the store is one atomic statement
(``UPDATE ... SET n = n + ?``, ``INSERT ... ON CONFLICT DO UPDATE``) or writes first and
reads its own row after, and PostgreSQL re-checks such a statement's row under its lock,
so no update is lost without SERIALIZABLE's retries. Reads are REPEATABLE READ READ ONLY:
one snapshot per interaction, as on SQLite. Queries keep SQLite's ``?``; each statement
text is translated to psycopg's ``%s`` once (cached).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from flm.store.engine import Engine
from flm.store.migrations import available, statements

#: pg_advisory_lock key held while migrating: two nodes starting at once take turns.
MIGRATION_LOCK = 0x464C4D00  # 'FLM\0'
CONNECT_TIMEOUT_S = 5
WRITERS = 3  # log flushes, usage, admin writes: each node writes little, in batches
READERS = 2

_translated: dict[str, str] = {}


def translate(sql: str) -> str:
    """``?`` placeholders to ``%s`` (and a literal ``%`` to ``%%``), once per text."""
    out = _translated.get(sql)
    if out is None:
        out = _translated[sql] = sql.replace("%", "%%").replace("?", "%s")
    return out


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_postgresql(database: Any) -> bool:
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


class PgCursor:
    """A psycopg cursor that speaks like the SQLite one the query code was written for:
    ``?`` placeholders, ``execute`` returning the cursor, empty ``executemany`` allowed."""

    dialect = "postgresql"
    __slots__ = ("_c",)

    def __init__(self, cursor: Any) -> None:
        self._c = cursor

    def execute(self, sql: str, args: Sequence[Any] | None = None) -> "PgCursor":
        if args:
            self._c.execute(translate(sql), args)
        else:
            self._c.execute(sql)
        return self

    def executemany(self, sql: str, rows: Any) -> "PgCursor":
        rows = list(rows)
        if rows:
            self._c.executemany(translate(sql), rows)
        return self

    def copy(self, statement: str) -> Any:
        """``COPY ... FROM STDIN`` (psycopg's ``Copy``: ``write_row``)."""
        return self._c.copy(statement)

    def fetchone(self) -> Any:
        return self._c.fetchone()

    def fetchall(self) -> list[Any]:
        return self._c.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._c.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._c.rowcount)


def _connection_lost(e: BaseException) -> bool:
    """psycopg's OperationalError: the connection is gone (or could not be made)."""
    import psycopg
    return isinstance(e, psycopg.OperationalError)


def _bool_as_int() -> Any:
    """Flags are INTEGER columns (as on SQLite): Python's bools go in as 0 / 1."""
    import psycopg
    from psycopg.adapt import Dumper

    class BoolAsInt(Dumper):
        oid = psycopg.adapters.types["int2"].oid

        def dump(self, obj: bool) -> bytes:
            return b"1" if obj else b"0"
    return BoolAsInt


def _configure(conn: Any, *, reader: bool) -> None:
    from psycopg import IsolationLevel
    conn.adapters.register_dumper(bool, _bool_as_int())
    if reader:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True


#: libpq TCP keepalives: a server gone without a word (a cable, a host frozen) is noticed
#: in about a minute, not at the OS's two-hour default, so no thread waits on it for long.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}


def connect(url: str, **kw: Any) -> Any:
    """One psycopg connection, or an error naming the URL without its password."""
    try:
        import psycopg
    except ImportError:
        raise RuntimeError("database: PostgreSQL needs psycopg: pip install "
                           "'flm[postgresql]'") from None
    try:
        conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, **{**KEEPALIVES, **kw})
    except psycopg.Error as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"database: cannot connect to {redact(url)}: {reason}") from None
    _configure(conn, reader=False)
    return conn


def check_database(url: str, node: str | None = None, now: float | None = None) -> None:
    """At start-up: RuntimeError (one line) when psycopg is missing, the server or the
    database cannot be reached, or a node of the same name is up on it (two processes
    under one name would take each other's leases and heartbeats)."""
    conn = connect(url)
    try:
        if node is not None:
            _refuse_a_live_namesake(conn, node, time.time() if now is None else now)
    finally:
        conn.close()


def _refuse_a_live_namesake(conn: Any, node: str, now: float) -> None:
    import psycopg
    try:
        row = conn.execute("SELECT status, seen_s, heartbeat_s FROM nodes WHERE name = %s",
                           (node,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return  # a database no FLM has started on yet
    if row is not None and row[0] == "up" and now - row[1] < 3 * row[2]:
        wait = 3 * row[2] - (now - row[1])
        raise RuntimeError(f"node_name: a node named {node!r} is up on this database (seen "
                           f"{now - row[1]:.0f} s ago); give this one another --node-name, "
                           f"or wait {wait:.0f} s if that node was killed")


def migrate(conn: Any) -> int:
    """Bring the database to the newest version under an advisory lock (a second node
    starting at once waits, then finds nothing to do); one transaction per step."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        current = 0 if row is None else int(row[0])
        for version, sql in available("postgresql"):
            if version <= current:
                continue
            with conn.transaction():
                for statement in statements(sql):
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = %s", (version,))
            current = version
        return current
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


class PostgresEngine(Engine):
    """``WRITERS`` writer connections and ``READERS`` snapshot readers on one database;
    a connection lost (server restarted, backend terminated) is replaced on next use."""

    dialect = "postgresql"

    def __init__(self, url: str, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.url = url

    def describe(self) -> str:
        return redact(self.url)

    def prepare(self, setup: Callable[[Any], Any]) -> Any:
        conn = connect(self.url, autocommit=True)
        try:
            migrate(conn)
            with conn.transaction():
                return setup(PgCursor(conn.cursor()))
        finally:
            conn.close()

    def start(self) -> None:
        def pool(n: int, reader: bool) -> adbapi.ConnectionPool:
            kw: dict[str, Any] = {"cp_min": 1, "cp_max": n, "cp_reconnect": True,
                                  "cp_good_sql": "SELECT 1", "cp_noisy": False,
                                  "connect_timeout": CONNECT_TIMEOUT_S, **KEEPALIVES,
                                  "cp_openfun": lambda c: _configure(c, reader=reader)}
            if self._reactor is not None:
                kw["cp_reactor"] = self._reactor
            return adbapi.ConnectionPool("psycopg", self.url, **kw)
        self._writer = pool(WRITERS, reader=False)
        self._reader = pool(READERS, reader=True)

    def touch(self, c: Any) -> None:
        """A row rewritten as it was: fails on a server that cannot write (down, a
        read-only standby, a database set read-only)."""
        c.execute("UPDATE schema_version SET version = version")

    def _enter(self, cursor: Any, kind: str) -> Any:
        return PgCursor(cursor)  # psycopg begins the transaction at the first statement

    def _run(self, pool: adbapi.ConnectionPool, kind: str, name: str,
             fn: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        """Again on another connection when one turns out lost (the server restarted,
        backends terminated) before the interaction's end: nothing was committed then, so
        it is safe for writes too (a loss at COMMIT is not retried). Each lost connection
        is dropped from the pool, so after at most one try per connection a new one is
        made; a server still down fails that one at connecting (not retried)."""
        entered: list[bool] = []
        ended: list[bool] = []
        tries = [pool.max + 1]

        def body(c: Any, *a: Any) -> Any:
            entered.append(True)
            result = fn(c, *a)
            ended.append(True)
            return result

        def again(failure: Failure) -> Any:
            tries[0] -= 1
            if not entered or ended or tries[0] <= 0 or not _connection_lost(failure.value):
                return failure
            del entered[:]
            return Engine._run(self, pool, kind, name, body, args).addErrback(again)
        return Engine._run(self, pool, kind, name, body, args).addErrback(again)


def database_name(url: str) -> str:
    """The database a URL names (its path), for tools that create or drop it."""
    name = urlsplit(url).path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name or ""):
        raise ValueError(f"database: {redact(url)} does not name a database")
    return name
