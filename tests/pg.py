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
