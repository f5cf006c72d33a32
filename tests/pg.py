"""Store tests on PostgreSQL: a fresh database ``flm_test_<uuid>`` per test, dropped after.

PostgreSQL is found at ``FLM_TEST_POSTGRESQL`` (default: the local server, user
``postgres``, trust auth). Without one the PostgreSQL cases skip, except with ``CI=true``:
CI machines have one, and a silent skip there would hide the engine's failures.

A test class runs on both engines by a subclass with :class:`OnPostgres` first: its
``database()`` hands out a fresh URL instead of the SQLite file.
"""

from __future__ import annotations

import functools
import os
import unittest
import uuid
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

SERVER = os.environ.get("FLM_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/postgres")
F = TypeVar("F", bound=Callable[..., Any])


@functools.lru_cache(maxsize=1)
def _unreachable() -> str:
    """Why PostgreSQL cannot be used ('' when it can)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        psycopg.connect(SERVER, connect_timeout=3).close()
    except psycopg.Error as e:
        return f"PostgreSQL at {SERVER} is not reachable: {str(e).strip()}"
    return ""


def require() -> None:
    """Skip (fail under ``CI=true``) when there is no PostgreSQL to test on."""
    reason = _unreachable()
    if reason:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{reason} (CI=true: the PostgreSQL cases must run)")
        raise unittest.SkipTest(reason)


def url_of(name: str) -> str:
    return urlunsplit(urlsplit(SERVER)._replace(path="/" + name))


def _admin(sql: str) -> None:
    import psycopg
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql)


def create_database() -> str:
    """A new empty database; its URL."""
    name = f"flm_test_{uuid.uuid4().hex[:16]}"
    _admin(f"CREATE DATABASE {name}")
    return url_of(name)


def drop_database(url: str) -> None:
    _admin(f"DROP DATABASE IF EXISTS {urlsplit(url).path.lstrip('/')} WITH (FORCE)")


def fresh_database(testcase: Any) -> str:
    """A database for this test only, dropped at its end (after the store's cleanups,
    which were added earlier and so run later: FORCE ends what is left connected)."""
    require()
    url = create_database()
    testcase.addCleanup(drop_database, url)
    return url


class OnPostgres:
    """Mixed in first: the test class's store opens a fresh PostgreSQL database."""

    engine = "postgresql"

    def database(self) -> str:
        return fresh_database(self)


def sqlite_only(test: F) -> F:
    """A test of something only the SQLite engine has (PRAGMAs, the file, query plans)."""
    @functools.wraps(test)
    def run(self: Any, *args: Any, **kw: Any) -> Any:
        if getattr(self, "engine", "sqlite") != "sqlite":
            raise unittest.SkipTest("SQLite only")
        return test(self, *args, **kw)
    return run  # type: ignore[return-value]


class OnSQLite:
    """The default: the test class's store opens a new SQLite file (trial's mktemp)."""

    engine = "sqlite"

    def database(self) -> Any:
        from pathlib import Path
        return Path(self.mktemp()) / "flm.sqlite3"  # type: ignore[attr-defined]


class PgSyncStore:
    """``tests.test_logs_api.SyncStore`` on PostgreSQL: ``run_read`` / ``run_write``
    answering at once, on one database per test class, emptied (ids from 1 again) by
    each new instance, as each SyncStore is a new in-memory SQLite."""

    conn: Any = None  # set by SyncOnPostgres.setUpClass
    emptying: list[str] = []

    def __init__(self) -> None:
        from flm.store.pg import PgCursor
        self._cursor = PgCursor
        conn = self.conn
        if not PgSyncStore.emptying:  # DELETE: much faster than TRUNCATE on tiny tables
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'schema_version' ORDER BY tablename = 'apis'")]
            PgSyncStore.emptying = ["DELETE FROM " + t for t in tables] + [
                f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), 1, false)"
                for t in ("apis", "api_keys", "request_logs")]
        with conn.transaction():
            for sql in PgSyncStore.emptying:
                conn.execute(sql)

    def run_read(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        from twisted.internet.defer import succeed
        with self.conn.transaction():
            return succeed(fn(self._cursor(self.conn.cursor()), *args))

    run_write = run_read

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        from flm.store.db import write_logs
        self.run_write("insert_logs", write_logs, rows, {})


class SyncOnPostgres:
    """Mixed in first: ``SyncStore()`` in the test module makes a :class:`PgSyncStore`."""

    engine = "postgresql"
    sync_modules: tuple[str, ...] = ()
    _url = ""

    @classmethod
    def setUpClass(cls) -> None:
        require()
        from flm.store.pg import connect, migrate
        cls._url = create_database()
        PgSyncStore.conn = connect(cls._url, autocommit=True)
        PgSyncStore.emptying = []
        migrate(PgSyncStore.conn)

    @classmethod
    def tearDownClass(cls) -> None:
        if PgSyncStore.conn is not None:
            PgSyncStore.conn.close()
            PgSyncStore.conn = None
        if cls._url:
            drop_database(cls._url)

    def setUp(self) -> None:
        import sys
        for module in self.sync_modules:
            self.patch(sys.modules[module], "SyncStore", PgSyncStore)  # type: ignore[attr-defined]
        super().setUp()  # type: ignore[misc]
