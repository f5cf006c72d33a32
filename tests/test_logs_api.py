"""The logs API: filters, status classes, keyset pagination (hypothesis), route errors."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from flm import keys
from flm.admin.app import AdminApp
from flm.admin.observe import Observe
from flm.observe.logbuffer import LogBuffer
from flm.observe.metrics import Metrics
from flm.store import Store, logs
from flm.store.db import LOG_COLUMNS, write_logs
from flm.store.migrations import migrate
from tests.pg import OnPostgres, OnSQLite, SyncOnPostgres, sqlite_only

T0 = 1_700_000_040.0  # a minute boundary
TOKEN = "admin-token"
STATUSES = (200, 201, 404, 429, 499, 500, 502, 503)


def log_row(api_id: int, created_at: float, status: int = 200, **over: Any) -> tuple[Any, ...]:
    values = dict(api_id=api_id, created_at=created_at, method="POST",
                  path="/v1/chat/completions", status=status, queue_ms=0.5, ttfb_ms=5.0,
                  upstream_ms=9.0, response_ms=10.0, bytes_in=100, bytes_out=200, model="m",
                  prompt_tokens=3, completion_tokens=4, request_id="r", error=None)
    values.update(over)
    return tuple(values.get(c) for c in LOG_COLUMNS)


def api_fields(n: int) -> dict[str, Any]:
    key = f"flm-test-key-{n:04d}-" + "x" * 30
    return {"name": f"api-{n}", "host": "127.0.0.1", "port": 18000 + n, "model": "m",
            "status": "stopped", "key_hash": keys.hash_key(key),
            "key_prefix": keys.key_prefix(key), "max_concurrent": 1, "max_queue": 32,
            "queue_timeout_s": 60.0, "upstream_timeout_s": 300.0, "rate_limit_rpm": None,
            "priority": 0, "allow_unknown_model": False}


class SyncStore:
    """The store's ``run_read``/``run_write`` over an in-memory SQLite, answering at once:
    the real schema and SQL, usable from hypothesis' synchronous examples."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        migrate(self.conn)

    def run_read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return succeed(fn(self.conn.cursor(), *args))

    def run_write(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self.conn.cursor(), *args)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return succeed(result)

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """As ``Store.insert_logs`` writes them (rows, then their id spans)."""
        self.run_write("insert_logs", write_logs, rows, {})


def now(coro: Any) -> Any:
    """The result of a coroutine that completes synchronously."""
    d = Deferred.fromCoroutine(coro)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "did not complete synchronously"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def matches(row: tuple[Any, ...], api: int | None, status: str | None) -> bool:
    if api is not None and row[0] != api:
        return False
    if status is None:
        return True
    if status.endswith("xx"):
        return row[4] // 100 == int(status[0])
    return row[4] == int(status)


rows_strategy = st.lists(st.tuples(st.integers(1, 3), st.sampled_from(STATUSES)),
                         min_size=0, max_size=60)
status_strategy = st.one_of(st.none(), st.sampled_from(["2xx", "4xx", "5xx", "500", "404"]))


class PaginationTests(SynchronousTestCase):
    @settings(derandomize=True, deadline=None, max_examples=150,
              suppress_health_check=[HealthCheck.differing_executors])  # both engines
    @given(rows=rows_strategy, limit=st.integers(1, 7), api=st.one_of(st.none(),
           st.integers(1, 3)), status=status_strategy,
           inserted=st.lists(st.tuples(st.integers(1, 3), st.sampled_from(STATUSES)),
                             max_size=5))
    def test_pages_have_no_gaps_or_repeats(self, rows: list[tuple[int, int]], limit: int,
                                           api: int | None, status: str | None,
                                           inserted: list[tuple[int, int]]) -> None:
        store = SyncStore()
        all_rows = [log_row(a, T0 + i, s) for i, (a, s) in enumerate(rows)]
        store.insert(all_rows)
        expected = [len(all_rows) - i for i, r in enumerate(reversed(all_rows))
                    if matches(r, api, status)]
        seen: list[int] = []
        before = None
        for _ in range(len(all_rows) + 2):
            items, before = now(logs.logs_page(store, api, limit, before, status))
            self.assertLessEqual(len(items), limit)
            seen += [r["id"] for r in items]
            # rows recorded while a client pages never show up in older pages
            store.insert([log_row(a, T0 + 1000, s) for a, s in inserted])
            if before is None:
                break
        self.assertEqual(seen, expected)

    @settings(derandomize=True, deadline=None, max_examples=50,
              suppress_health_check=[HealthCheck.differing_executors])  # both engines
    @given(created=st.lists(st.integers(0, 600), max_size=40), since=st.integers(0, 600),
           width=st.integers(1, 600))
    def test_time_window(self, created: list[int], since: int, width: int) -> None:
        store = SyncStore()
        store.insert([log_row(1, T0 + c) for c in created])  # arrival order != id order
        items, cursor = now(logs.logs_page(store, 1, 500, None, None, T0 + since,
                                           T0 + since + width))
        want = [i + 1 for i, c in enumerate(created) if since <= c < since + width]
        self.assertEqual([r["id"] for r in items], sorted(want, reverse=True))
        self.assertIsNone(cursor)

    def test_parse_status(self) -> None:
        self.assertEqual(logs.parse_status("5xx"), (5, None))
        self.assertEqual(logs.parse_status("404"), (4, 404))
        for bad in ("", "6xx", "5x", "50", "5000", "abc", "2XY", "-1"):
            self.assertRaises(ValueError, logs.parse_status, bad)

    @sqlite_only
    def test_plans_use_the_indexes(self) -> None:
        store = SyncStore()
        for args, index in (((7, 51), "request_logs_api_id"),
                            ((7, 51, 99, (5, None)), "request_logs_api_class"),
                            ((7, 51, 99, (5, 503)), "request_logs_api_class"),
                            ((7, 51, None, None, T0, T0 + 60), "request_logs_api_id"),
                            ((None, 51, 99), "PRIMARY KEY")):
            sql, params = logs.logs_sql(*args)  # type: ignore[arg-type]
            plan = " ".join(r[-1] for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql,
                                                              params))
            self.assertIn(index, plan, args)
            self.assertNotIn("TEMP B-TREE", plan, args)


class LogsRouteTests(OnSQLite, TestCase):
    """``/api/apis/{id}/logs`` and ``/api/logs`` over a real Store and the Klein app."""

    async def asyncSetUp(self) -> None:
        self.store = Store(self.database())
        self.store.startService()
        self.addCleanup(self.store.stopService)
        self.one = await self.store.create_api(api_fields(1))
        self.two = await self.store.create_api(api_fields(2))
        rows = [log_row(self.one.id if i % 3 else self.two.id, T0 + i, STATUSES[i % 8])
                for i in range(120)]
        await self.store.insert_logs(rows, {})
        clock = Clock()
        clock.advance(T0 + 120)
        buffer = LogBuffer(self.store, clock)
        registry = SimpleNamespace(runtimes={}, upstream=SimpleNamespace(gate=None))
        metrics = Metrics(self.store, clock, registry=registry, logbuffer=buffer)
        observe = Observe(self.store, metrics=metrics, monitor=None, registry=registry,
                          logbuffer=buffer, clock=clock)
        app = AdminApp(token=TOKEN, apis=None, health=None, observe=observe)  # type: ignore
        self.stub = StubTreq(app.resource())

    async def pump(self, d: Deferred[Any]) -> Any:
        """Wait for ``d``, flushing the fake connection while the store's thread works."""
        done: list[Any] = []
        d.addBoth(lambda r: done.append(r) or r)
        for _ in range(5000):
            if done:
                break
            self.stub.flush()
            await deferLater(reactor, 0.001, lambda: None)
        return await d

    async def get(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.pump(self.stub.get("http://admin" + path, headers=headers))
        body = await self.pump(response.content())
        return response.code, json.loads(body)

    async def test_one_api_filters_and_shape(self) -> None:
        await self.asyncSetUp()
        code, page = await self.get(f"/api/apis/{self.one.id}/logs?status=5xx&limit=500")
        self.assertEqual(code, 200)
        self.assertTrue(page["items"])
        self.assertIsNone(page["next_cursor"])
        self.assertTrue(all(r["status"] >= 500 for r in page["items"]))
        ids = [r["id"] for r in page["items"]]
        self.assertEqual(ids, sorted(ids, reverse=True))
        first = page["items"][0]
        self.assertEqual(set(first), {"id", *LOG_COLUMNS})
        self.assertRegex(first["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        code, page = await self.get("/api/apis/api-1/logs?status=503")
        self.assertEqual({r["status"] for r in page["items"]}, {503})
        since, until = "2023-11-14T22:14:20Z", "2023-11-14T22:14:40Z"  # T0 + 20 .. T0 + 40
        code, page = await self.get(f"/api/apis/{self.one.id}/logs?since={since}&until={until}")
        self.assertEqual(code, 200)
        self.assertEqual(sorted(r["id"] for r in page["items"]),
                         [i + 1 for i in range(20, 40) if i % 3])

    async def test_pages_and_all_apis(self) -> None:
        await self.asyncSetUp()
        seen: list[int] = []
        path = "/api/logs?limit=7"
        while path:
            code, page = await self.get(path)
            self.assertEqual(code, 200)
            seen += [r["id"] for r in page["items"]]
            path = f"/api/logs?limit=7&cursor={page['next_cursor']}" if page["next_cursor"] \
                else ""
        self.assertEqual(seen, list(range(120, 0, -1)))
        code, page = await self.get("/api/logs?api=api-2&limit=500")
        self.assertEqual({r["api_id"] for r in page["items"]}, {self.two.id})
        self.assertEqual(len(page["items"]), 40)

    async def test_errors_name_the_field(self) -> None:
        await self.asyncSetUp()
        base = f"/api/apis/{self.one.id}/logs"
        for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
                             ("status=6xx", "status"), ("status=ok", "status"),
                             ("since=yesterday", "since"), ("until=nan", "until"),
                             ("since=2024-01-02&until=2024-01-01", "until"),
                             ("cursor=garbage!", "cursor"), ("cursor=YTU", "cursor"),
                             ("colour=red", "colour")):
            code, body = await self.get(f"{base}?{query}")
            self.assertEqual(code, 422, query)
            self.assertTrue(body["error"]["message"].startswith(field + ":"), (query, body))
        code, body = await self.get("/api/logs?api=nope")
        self.assertEqual((code, body["error"]["message"][:4]), (422, "api:"))
        code, body = await self.get("/api/apis/nope/logs")
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))
        code, body = await self.get(base, token=None)
        self.assertEqual(code, 401)
        code, body = await self.get("/api/logs", token="wrong")
        self.assertEqual(code, 401)


class LogsRoutePostgresTests(OnPostgres, LogsRouteTests):
    """The logs API over a store on PostgreSQL."""


class PaginationPostgresTests(SyncOnPostgres, PaginationTests):
    """Keyset pages and windows with the same SQL on PostgreSQL."""

    sync_modules = (__name__,)
