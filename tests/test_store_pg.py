"""What only the PostgreSQL engine has: migrations under an advisory lock, start-up
errors, an outage (connections terminated, the database refusing new ones) and the way
back, and the copy of a SQLite database (every table, every row, ids kept)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from flm.cli import main as flm_main
from flm.config import Settings
from flm.observe.health import DatabaseCheck
from flm.observe.logbuffer import LogBuffer
from flm.startup import DataDirLock, StartupError
from flm.store import Store, logs
from flm.store.copy import CopyError, copy_database, tables_in_order
from flm.store.migrations import available
from flm.store.pg import WRITERS, check_database, connect, migrate, redact, translate
from tests import pg
from tests.test_store import T0, api_fields, log_row


def test_placeholders_translate_once() -> None:
    assert translate("SELECT ? WHERE x LIKE '%a'") == "SELECT %s WHERE x LIKE '%%a'"
    assert translate("SELECT ? WHERE x LIKE '%a'") is translate("SELECT ? WHERE x LIKE '%a'")


def test_messages_never_show_the_password() -> None:
    assert redact("postgresql://flm:s3cret@db:5432/flm") == "postgresql://flm:***@db:5432/flm"
    assert redact("postgresql://flm@db/flm") == "postgresql://flm@db/flm"


def test_an_unreachable_server_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    from flm.service import build
    url = "postgresql://flm:s3cret@127.0.0.1:1/flm"
    settings = Settings(data_dir=str(tmp_path), database=url)
    with pytest.raises(StartupError) as e:
        build(settings, reactor)
    text = str(e.value)
    assert text.startswith("database: cannot connect to postgresql://flm:***@127.0.0.1:1/flm:")
    assert "s3cret" not in text and "\n" not in text


def test_a_missing_database_is_a_one_line_error() -> None:
    pg.require()
    with pytest.raises(RuntimeError) as e:
        connect(pg.url_of("flm_test_does_not_exist"))
    assert "flm_test_does_not_exist" in str(e.value) and "\n" not in str(e.value)


def test_a_second_node_of_a_live_name_is_refused_in_one_line() -> None:
    pg.require()
    url = pg.create_database()
    try:
        check_database(url, "a", now=T0)  # nothing started on it yet: no nodes table
        conn = connect(url, autocommit=True)
        migrate(conn)
        conn.execute("INSERT INTO nodes (name, started_at, last_seen, seen_s, heartbeat_s, "
                     "status, apis) VALUES ('a', '', '', %s, 5, 'up', '[]')", (T0,))
        conn.close()
        with pytest.raises(RuntimeError) as e:
            check_database(url, "a", now=T0 + 4)
        assert str(e.value).startswith("node_name: a node named 'a' is up on this database")
        assert "wait 11 s" in str(e.value) and "\n" not in str(e.value)
        check_database(url, "b", now=T0 + 4)  # another name
        check_database(url, "a", now=T0 + 16)  # three heartbeats missed: that one is gone
    finally:
        pg.drop_database(url)


def test_nodes_on_postgresql_leave_the_data_dir_unlocked(tmp_path: Path) -> None:
    """Several nodes on one machine may share a data dir: only SQLite needs the lock."""
    from flm.service import build
    pg.require()
    url = pg.create_database()
    try:
        settings = Settings(data_dir=str(tmp_path), database=url,
                            admin="tcp:0:interface=127.0.0.1")
        service = build(settings, reactor)
        try:
            DataDirLock.take(str(tmp_path)).release()  # free: nobody holds it
        finally:
            service.admin_service.port.stopListening()
    finally:
        pg.drop_database(url)


def test_two_nodes_migrating_at_once_take_turns() -> None:
    pg.require()
    url = pg.create_database()
    try:
        results: list[Any] = []

        def run() -> None:
            conn = connect(url, autocommit=True)
            try:
                results.append(migrate(conn))
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                results.append(e)
            finally:
                conn.close()
        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        newest = available("postgresql")[-1][0]
        assert results == [newest] * 3
        conn = connect(url, autocommit=True)
        try:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(newest,)]
        finally:
            conn.close()
    finally:
        pg.drop_database(url)


def _admin(sql: str, *args: Any) -> None:
    with connect(pg.SERVER, autocommit=True) as conn:
        conn.execute(sql, args or None)


class OutageTests(TestCase):
    """PostgreSQL gone from under a running store: /health's write check says no, the
    log buffer keeps its rows (bounded, drops counted), and once the database is back
    the pools reconnect and the buffer writes everything it kept, once."""

    def setUp(self) -> None:
        self.url = pg.fresh_database(self)
        self.name = self.url.rsplit("/", 1)[1]
        self.store = Store(self.url, reactor=reactor)
        self.store.startService()
        self.addCleanup(self.store.stopService)
        self.addCleanup(_admin, f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")

    def cut(self) -> None:
        _admin(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false")
        _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
               "AND pid <> pg_backend_pid()", self.name)

    async def test_a_read_only_database_is_not_writable(self) -> None:
        check = DatabaseCheck(self.store, Clock(), cache_s=0.0)
        self.assertTrue(await check.writable())
        _admin(f"ALTER DATABASE {self.name} SET default_transaction_read_only = on")
        self.addCleanup(_admin, f"ALTER DATABASE {self.name} RESET default_transaction_read_only")
        _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
               "AND pid <> pg_backend_pid()", self.name)
        results = [await check.writable() for _ in range(8)]  # dead ones replaced, then no
        self.assertEqual(results[-3:], [False] * 3)
        self.flushLoggedErrors()

    async def test_an_outage_is_degraded_and_the_buffer_catches_up(self) -> None:
        api = await self.store.create_api(api_fields(1))
        # every writer connection open, so the cut kills them all
        await gatherResults([self.store.write_check() for _ in range(WRITERS * 2)])
        clock = Clock()
        check = DatabaseCheck(self.store, clock, cache_s=1.0)
        buffer = LogBuffer(self.store, clock, batch_rows=1000, max_rows=6)
        self.assertTrue(await check.writable())
        for i in range(3):
            buffer.record(log_row(api.id, T0 + i))
        await buffer.flush()
        self.assertEqual((buffer.written, buffer.rows), (3, []))

        self.cut()
        for i in range(3, 11):  # 8 more: 6 kept, 2 dropped and counted
            buffer.record(log_row(api.id, T0 + i))
        await buffer.flush()
        self.assertFalse(buffer.healthy)
        self.assertEqual((len(buffer.rows), buffer.dropped), (6, 2))
        for _ in range(4):  # every writer connection finds the database gone
            clock.advance(1.0)
            self.assertFalse(await check.writable())
        self.assertEqual(len(buffer.rows), 6)

        _admin(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")
        for _ in range(10):  # a connection lost is replaced on its next use
            await buffer.flush()
            if buffer.healthy:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(buffer.healthy)
        self.assertEqual(buffer.rows, [])
        clock.advance(1.0)
        for _ in range(10):
            if await check.writable():
                break
            clock.advance(1.0)
        self.assertTrue(await check.writable())
        for _ in range(WRITERS * 4):  # every writer thread has a live connection again
            await self.store.write_check()
        items, _ = await logs.logs_page(self.store, api.id, 100)
        self.assertEqual(sorted(r["created_at"] for r in items), [T0 + i for i in range(9)])
        self.flushLoggedErrors()  # adbapi logs each failed rollback on a dead connection


class CopyTests(TestCase):
    """A SQLite database with rows in every table, copied; then compared table by table."""

    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self._fill())

    async def _fill(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="flm-test-copy-"))
        self.addCleanup(shutil.rmtree, data, True)
        self.path = data / "flm.db"
        self.url = pg.fresh_database(self)
        store = Store(self.path, now=lambda: T0)
        store.startService()
        try:
            apis = [await store.create_api(api_fields(n)) for n in (1, 2, 3)]
            key = await store.create_key(apis[0].id, "ci", "h-ci", "p-ci", daily_token_budget=9)
            await store.add_key_usage({(key.id, 19000): [3, 40]}, {key.id: "2026-01-01Z"})
            await store.put_default_backend({"url": "http://127.0.0.1:11434",
                                              "kind": "ollama", "max_concurrent": 1})
            await store.create_backend({"name": "gpu", "url": "http://127.0.0.1:8000",
                                        "kind": "openai", "max_concurrent": 4,
                                        "enabled": False})
            await store.insert_logs([log_row(apis[i % 3].id, T0 + i * 0.37,
                                             status=(200, 503)[i % 2]) for i in range(2500)],
                                    {apis[0].id: T0})
            await logs.upsert_metrics(store, [(apis[0].id, int(T0) // 60 * 60, 5, 1, 50.5,
                                               20.25, None, 7, 9)])
            await store.update_api(apis[1].id, {"backends": ("gpu",), "status": "running"})
            self.last_api = apis[2].id
            await store.delete_api(apis[2].id)  # its id must never be given again
            store._stopping = True  # leave deleted_apis with a row to copy
        finally:
            await store.stopService()

    def rows(self, table: str, cols: list[str], conn: Any) -> list[tuple[Any, ...]]:
        names = ", ".join(cols)
        return [tuple(r) for r in conn.execute(f"SELECT {names} FROM {table} ORDER BY {names}")]

    def test_a_database_in_use_is_not_copied(self) -> None:
        lock = DataDirLock.take(str(self.path.parent), self.path)  # a running FLM's
        try:
            with self.assertRaises(CopyError) as e:
                copy_database(f"sqlite:{self.path}", self.url)
            self.assertIn(f"in use by a running FLM (pid {os.getpid()}): stop it first",
                          str(e.exception))
        finally:
            lock.release()

    async def test_every_table_and_row_is_copied_and_ids_go_on(self) -> None:
        counts = copy_database(f"sqlite:{self.path}", self.url)
        src = sqlite3.connect(self.path)
        dst = connect(self.url)
        try:
            tables = tables_in_order(src)
            self.assertEqual(sorted(counts), sorted(tables))
            for table in tables:
                cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
                want = self.rows(table, cols, src)
                self.assertEqual(counts[table], len(want), table)
                self.assertEqual(self.rows(table, cols, dst), want, table)
            self.assertGreater(counts["request_logs"], 2000)
            for table in ("apis", "api_keys", "key_usage", "backends", "request_log_spans",
                          "performance_metrics", "deleted_apis"):
                self.assertGreater(counts[table], 0, table)
        finally:
            src.close()
            dst.close()
        with self.assertRaises(CopyError):  # a target with rows is refused
            copy_database(f"sqlite:{self.path}", self.url)

        store = Store(self.url, now=lambda: T0)
        store.startService()
        self.addCleanup(store.stopService)
        new = await store.create_api(api_fields(4))
        self.assertGreater(new.id, self.last_api)  # ids of deleted APIs are not reused
        key = await store.create_key(new.id, "more", "h-more", "p-more")
        self.assertGreater(key.id, 4)
        before = (await logs.logs_page(store, None, 1))[0][0]["id"]
        await store.insert_logs([log_row(new.id, T0 + 9999)], {})
        self.assertEqual((await logs.logs_page(store, None, 1))[0][0]["id"], before + 1)

    def test_flm_db_copy_runs_it(self) -> None:
        code = flm_main(["--token", "x", "db", "copy", "--from", f"sqlite:{self.path}",
                         "--to", self.url])
        self.assertEqual(code, 0)
        with connect(self.url) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM apis").fetchone()[0], 2)
        self.assertEqual(flm_main(["--token", "x", "db", "copy", "--from",
                                   f"sqlite:{self.path}", "--to", self.url]), 1)
