"""flm.store over a real SQLite file through adbapi, on the real reactor (trial TestCase),
and the same tests on a fresh PostgreSQL database (``StorePostgresTests``)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from flm import keys
from flm.store import API_FIELDS, Conflict, Store, utc_iso
from flm.store.db import LOG_COLUMNS
from flm.store.migrations import available, migrate
from tests.pg import OnPostgres, sqlite_only

T0 = 1_700_000_000.0

# The queries the logs API runs (newest first, keyset on id), as the schema documents them.
LOG_PAGE = ("SELECT id, status FROM request_logs WHERE api_id = ? AND id < ? "
            "ORDER BY id DESC LIMIT ?")
LOG_PAGE_BY_STATUS = ("SELECT id, status FROM request_logs WHERE api_id = ? "
                      "AND status BETWEEN ? AND ? AND id < ? ORDER BY id DESC LIMIT ?")


def api_fields(n: int, **over: Any) -> dict[str, Any]:
    key = f"flm-test-key-{n:04d}-" + "x" * 30
    fields = {
        "name": f"api-{n}", "host": "127.0.0.1", "port": 18000 + n, "model": "llama3.2",
        "status": "stopped", "key_hash": keys.hash_key(key), "key_prefix": keys.key_prefix(key),
        "max_concurrent": 1, "max_queue": 32, "queue_timeout_s": 60.0,
        "upstream_timeout_s": 300.0, "rate_limit_rpm": None, "priority": 0,
        "allow_unknown_model": False,
    }
    fields.update(over)
    return fields


def log_row(api_id: int, created_at: float, status: int = 200, **over: Any) -> tuple[Any, ...]:
    row = dict(api_id=api_id, created_at=created_at, method="POST",
               path="/v1/chat/completions", status=status, queue_ms=0.1, ttfb_ms=5.0,
               upstream_ms=9.0, response_ms=10.0, bytes_in=100, bytes_out=200,
               model="llama3.2", prompt_tokens=3, completion_tokens=4,
               request_id="r", error=None)
    row.update(over)
    return tuple(row.get(c) for c in LOG_COLUMNS)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class StoreTests(TestCase):
    engine = "sqlite"

    def database(self) -> Any:
        """What the store opens: the SQLite file here, a PostgreSQL URL in the subclass."""
        return self.path

    def setUp(self) -> None:
        # Not self.mktemp(): outside trial's runner it writes under the current directory.
        data = Path(tempfile.mkdtemp(prefix="flm-test-store-"))
        self.addCleanup(shutil.rmtree, data, True)
        self.path = data / "flm.sqlite3"
        self.clock = Clock()
        self.target = self.database()
        self.store = Store(self.target, now=self.clock)
        self.store.startService()
        self.addCleanup(self.store.stopService)

    async def count(self, sql: str, *args: Any) -> int:
        def txn(c: Any) -> int:
            c.execute(sql, args)
            return c.fetchone()[0]
        return await self.store.run_read("test_count", txn)

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        def txn(c: Any) -> list[tuple[Any, ...]]:
            c.execute(sql, args)
            return c.fetchall()
        return await self.store.run_read("test_query", txn)

    # schema

    async def test_migrations_set_user_version(self) -> None:
        newest = available()[-1][0]
        if self.engine == "sqlite":
            self.assertEqual(await self.query("PRAGMA user_version"), [(newest,)])
            tables = {r[0] for r in await self.query(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        else:
            self.assertEqual(available("postgresql")[-1][0], newest)
            self.assertEqual(await self.query("SELECT version FROM schema_version"),
                             [(newest,)])
            tables = {r[0] for r in await self.query(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        self.assertTrue({"apis", "request_logs", "performance_metrics"} <= tables)

    @sqlite_only
    def test_migrations_are_idempotent(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            self.assertEqual(migrate(conn), version)
            self.assertEqual(migrate(conn), version)
            self.assertEqual(conn.execute("SELECT sql FROM sqlite_master ORDER BY name")
                             .fetchall(), before)
        finally:
            conn.close()

    async def test_reopening_keeps_the_data(self) -> None:
        created = await self.store.create_api(api_fields(1))
        await self.store.stopService()
        again = Store(self.target, now=self.clock)
        again.startService()
        self.addCleanup(again.stopService)
        self.assertEqual(await again.get_api(created.id), created)

    def test_migrations_are_versioned_files_in_order(self) -> None:
        versions = [v for v, _ in available()]
        self.assertEqual(versions, sorted(set(versions)))
        self.assertEqual(versions[0], 1)

    @sqlite_only
    async def test_pragmas(self) -> None:
        self.assertEqual(await self.query("PRAGMA journal_mode"), [("wal",)])
        self.assertEqual(await self.query("PRAGMA foreign_keys"), [(1,)])
        self.assertEqual(await self.query("PRAGMA busy_timeout"), [(5000,)])

    # APIs

    async def test_create_and_get_by_id_and_name(self) -> None:
        self.clock.now = T0 + 0.5
        api = await self.store.create_api(api_fields(1, rate_limit_rpm=60, priority=5,
                                                     allow_unknown_model=True))
        self.assertEqual(api.name, "api-1")
        self.assertEqual(api.created_at, "2023-11-14T22:13:20.500Z")
        self.assertEqual(api.updated_at, api.created_at)
        self.assertIsNone(api.last_used_at)
        self.assertIs(api.allow_unknown_model, True)
        self.assertEqual((api.rate_limit_rpm, api.priority), (60, 5))
        self.assertEqual(await self.store.get_api(api.id), api)
        self.assertEqual(await self.store.get_api(str(api.id)), api)
        self.assertEqual(await self.store.get_api("api-1"), api)
        self.assertIsNone(await self.store.get_api(api.id + 1))
        self.assertIsNone(await self.store.get_api("nope"))
        self.assertNotIn("key_hash", api.public())

    async def test_name_and_port_conflicts(self) -> None:
        await self.store.create_api(api_fields(1))
        with self.assertRaises(Conflict) as e:
            await self.store.create_api(api_fields(2, name="api-1"))
        self.assertEqual(e.exception.field, "name")
        with self.assertRaises(Conflict) as e:
            await self.store.create_api(api_fields(2, port=18001))
        self.assertEqual(e.exception.field, "port")
        # A failed insert leaves nothing behind, and the next one works.
        self.assertEqual(await self.count("SELECT count(*) FROM apis"), 1)
        await self.store.create_api(api_fields(2))

    async def test_update_conflicts(self) -> None:
        await self.store.create_api(api_fields(1))
        two = await self.store.create_api(api_fields(2))
        with self.assertRaises(Conflict) as e:
            await self.store.update_api(two.id, {"name": "api-1"})
        self.assertEqual(e.exception.field, "name")
        with self.assertRaises(Conflict) as e:
            await self.store.update_api(two.id, {"port": 18001})
        self.assertEqual(e.exception.field, "port")
        self.assertEqual(await self.store.get_api(two.id), two)

    async def test_update(self) -> None:
        api = await self.store.create_api(api_fields(1))
        self.clock.now = T0 + 60
        updated = await self.store.update_api(api.id, {"model": "qwen", "max_concurrent": 4,
                                                       "status": "running"})
        self.assertEqual((updated.model, updated.max_concurrent, updated.status),
                         ("qwen", 4, "running"))
        self.assertEqual(updated.created_at, api.created_at)
        self.assertEqual(updated.updated_at, utc_iso(T0 + 60))
        self.assertEqual(await self.store.get_api(api.id), updated)
        self.assertIsNone(await self.store.update_api(api.id + 100, {"model": "x"}))

    async def test_list_keyset_pagination(self) -> None:
        ids = [(await self.store.create_api(api_fields(n))).id for n in range(1, 8)]
        page, total = await self.store.list_apis(limit=3)
        self.assertEqual(([a.id for a in page], total), (ids[:3], 7))
        page, total = await self.store.list_apis(limit=3, after_id=page[-1].id)
        self.assertEqual(([a.id for a in page], total), (ids[3:6], 7))
        page, total = await self.store.list_apis(limit=3, after_id=page[-1].id)
        self.assertEqual(([a.id for a in page], total), (ids[6:], 7))
        page, total = await self.store.list_apis(limit=3, after_id=ids[-1])
        self.assertEqual((page, total), ([], 7))

    async def test_list_by_status(self) -> None:
        for n in range(1, 7):
            await self.store.create_api(api_fields(n, status="running" if n % 2 else "stopped"))
        page, total = await self.store.list_apis(limit=2, status="running")
        self.assertEqual(([a.name for a in page], total), (["api-1", "api-3"], 3))
        page, total = await self.store.list_apis(limit=2, after_id=page[-1].id,
                                                 status="running")
        self.assertEqual(([a.name for a in page], total), (["api-5"], 3))
        page, total = await self.store.list_apis(limit=10, status="error")
        self.assertEqual((page, total), ([], 0))

    async def test_apis_to_run_and_used_ports(self) -> None:
        await self.store.create_api(api_fields(1, status="running"))
        await self.store.create_api(api_fields(2, status="stopped"))
        await self.store.create_api(api_fields(3, status="error"))
        self.assertEqual([a.name for a in await self.store.apis_to_run()], ["api-1", "api-3"])
        self.assertEqual(await self.store.used_ports(), {18001, 18002, 18003})

    # logs

    async def test_insert_logs_and_last_used(self) -> None:
        one = await self.store.create_api(api_fields(1))
        two = await self.store.create_api(api_fields(2))
        rows = [log_row(one.id, T0 + i) for i in range(5)] + [log_row(two.id, T0 + 9)]
        await self.store.insert_logs(rows, {one.id: T0 + 4})
        self.assertEqual(await self.count("SELECT count(*) FROM request_logs"), 6)
        self.assertEqual((await self.store.get_api(one.id)).last_used_at, utc_iso(T0 + 4))
        self.assertIsNone((await self.store.get_api(two.id)).last_used_at)
        stored = await self.query(f"SELECT {', '.join(LOG_COLUMNS)} FROM request_logs "
                                  "ORDER BY id")
        self.assertEqual(stored, rows)
        if self.engine == "sqlite":  # ids increase in the order rows are recorded
            ids = [r[0] for r in await self.query("SELECT id FROM request_logs ORDER BY rowid")]
            self.assertEqual(ids, sorted(ids))

    async def test_delete_removes_logs_in_batches_and_metrics(self) -> None:
        one = await self.store.create_api(api_fields(1))
        two = await self.store.create_api(api_fields(2))
        await self.store.insert_logs([log_row(one.id, T0 + i) for i in range(23)]
                                     + [log_row(two.id, T0)] * 3, {})

        def metrics(c: Any) -> None:
            c.executemany("INSERT INTO performance_metrics VALUES (?, ?, 1, 0, 1.0, 1.0, 1.0, "
                          "0, 0)", [(one.id, 60), (one.id, 120), (two.id, 60)])
        await self.store.run_write("test_metrics", metrics)

        batches: list[int] = []
        real_write = self.store.run_write

        def counting_write(name: str, fn: Any, *args: Any) -> Any:
            if name == "purge_api_logs":
                batches.append(1)
            return real_write(name, fn, *args)
        self.store.run_write = counting_write  # type: ignore[method-assign]
        self.store.purge_batch = 5

        self.assertIs(await self.store.delete_api(one.id), True)
        await self.store.purge()
        self.assertGreaterEqual(len(batches), 5)  # 23 rows, 5 at a time
        self.assertIsNone(await self.store.get_api(one.id))
        self.assertEqual(await self.count(
            "SELECT count(*) FROM request_logs WHERE api_id = ?", one.id), 0)
        self.assertEqual(await self.count(
            "SELECT count(*) FROM request_logs WHERE api_id = ?", two.id), 3)
        self.assertEqual(await self.count(
            "SELECT count(*) FROM performance_metrics WHERE api_id = ?", one.id), 0)
        self.assertEqual(await self.count(
            "SELECT count(*) FROM performance_metrics WHERE api_id = ?", two.id), 1)
        self.assertIs(await self.store.delete_api(one.id), False)

    async def test_an_id_past_64_bits_is_no_row_not_an_error(self) -> None:
        api = await self.store.create_api(api_fields(1))
        for ref in ("9223372036854775808", "99999999999999999999999"):
            self.assertIsNone(await self.store.get_api(ref))
            self.assertIsNone(await self.store.get_key(api.id, ref))
        self.assertEqual((await self.store.get_api(str(api.id))).id, api.id)

    async def test_rows_of_a_deleted_api_written_after_its_purge_are_dropped(self) -> None:
        """Rows still in a buffer (this node's or another's) when the API was deleted."""
        one = await self.store.create_api(api_fields(1))
        two = await self.store.create_api(api_fields(2))
        await self.store.delete_api(one.id)
        await self.store.purge()
        await self.store.insert_logs([log_row(one.id, T0), log_row(two.id, T0),
                                      log_row(one.id, T0 + 1)], {})
        self.assertEqual(await self.query("SELECT api_id FROM request_logs"), [(two.id,)])

    @sqlite_only
    async def test_log_page_queries_use_the_indexes(self) -> None:
        ids = [(await self.store.create_api(api_fields(n))).id for n in range(1, 11)]
        await self.store.insert_logs([log_row(ids[i % 10], T0 + i, status=200 + (i % 4) * 100)
                                      for i in range(2000)], {})
        for analyzed in (False, True):
            if analyzed:
                await self.store.run_write("analyze", lambda c: c.execute("ANALYZE"))
            for sql, args in ((LOG_PAGE, (ids[2], 10**9, 50)),
                              (LOG_PAGE_BY_STATUS, (ids[2], 500, 599, 10**9, 50))):
                plan = " ".join(r[-1] for r in await self.query("EXPLAIN QUERY PLAN " + sql,
                                                                *args))
                self.assertRegex(plan, r"^SEARCH request_logs USING (COVERING )?INDEX "
                                       r"request_logs_api_\w+ \(api_id=\?")
                self.assertNotIn("TEMP B-TREE", plan)
        # the page itself: newest first, keyset on id
        rows = await self.query(LOG_PAGE, ids[2], 10**9, 3)
        self.assertEqual([r[0] for r in rows], [1993, 1983, 1973])
        rows = await self.query(LOG_PAGE, ids[2], 1973, 2)
        self.assertEqual([r[0] for r in rows], [1963, 1953])

    @sqlite_only
    async def test_api_list_by_status_uses_its_index(self) -> None:
        plan = " ".join(r[-1] for r in await self.query(
            "EXPLAIN QUERY PLAN SELECT id FROM apis WHERE status = ? AND id > ? "
            "ORDER BY id LIMIT ?", "running", 0, 50))
        self.assertIn("apis_status_id", plan)
        self.assertNotIn("TEMP B-TREE", plan)

    # the key itself

    @sqlite_only
    async def test_key_never_stored_in_clear(self) -> None:
        key = keys.new_key()
        await self.store.create_api(api_fields(1, key_hash=keys.hash_key(key),
                                               key_prefix=keys.key_prefix(key)))
        self.assertNotIn("key", API_FIELDS)
        columns = [r[1] for r in await self.query("PRAGMA table_info(apis)")]
        self.assertNotIn("key", columns)
        await self.store.stopService()
        raw = b"".join(p.read_bytes() for p in self.path.parent.iterdir() if p.is_file())
        self.assertNotIn(key.encode(), raw)
        self.assertNotIn(key[len(keys.key_prefix(key)):].encode(), raw)
        self.assertIn(keys.hash_key(key).encode(), raw)


class StorePostgresTests(OnPostgres, StoreTests):
    """Every test above on PostgreSQL (those of SQLite's own things skip)."""
