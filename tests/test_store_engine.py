"""The store's engine on real adbapi threads: a reader that never holds up the writer,
named and timed queries, a damaged file refused, deletes that answer at once, rollups
rebuilt after a crash. Synchronous harnesses would hide the races these are about."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from flm.observe.metrics import Metrics
from flm.store import Store, logs
from tests.test_store import T0, api_fields, log_row


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (may return a Deferred) until it is true; fail after ``timeout``."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while True:
        value = check()
        if isinstance(value, Deferred):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01, lambda: None)


class EngineTests(TestCase):
    def setUp(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="flm-test-engine-"))
        self.addCleanup(shutil.rmtree, data, True)
        self.path = data / "flm.sqlite3"
        self.store = Store(self.path)
        self.store.startService()
        self.addCleanup(lambda: self.store.stopService() if self.store.running else None)

    async def count(self, sql: str = "SELECT count(*) FROM request_logs") -> int:
        return int((await self.store.run_read("test_count", lambda c: c.execute(sql)
                                              .fetchone()))[0])

    async def test_a_slow_admin_read_does_not_hold_up_a_log_flush(self) -> None:
        api = await self.store.create_api(api_fields(1))
        entered, release = threading.Event(), threading.Event()

        def slow_read(c: Any) -> int:
            c.execute("SELECT count(*) FROM request_logs")
            entered.set()
            release.wait(30)
            return 0
        reading = self.store.run_read("slow_admin_read", slow_read)
        self.addCleanup(release.set)
        await until(entered.is_set)
        flushed = Deferred.fromCoroutine(self.store.insert_logs([log_row(api.id, T0)],
                                                              {api.id: T0}))
        try:
            await until(lambda: flushed.called)
        finally:
            release.set()
        await reading
        self.assertEqual(await self.count(), 1)

    async def test_reads_cannot_write(self) -> None:
        with self.assertRaises(sqlite3.OperationalError):
            await self.store.run_read("sneaky", lambda c: c.execute("DELETE FROM apis"))

    async def test_every_query_is_named_and_timed(self) -> None:
        api = await self.store.create_api(api_fields(1))
        await self.store.insert_logs([log_row(api.id, T0)], {})
        await logs.logs_page(self.store, None, 10)
        stats = self.store.timings.queries
        self.assertTrue({"create_api", "insert_logs", "logs_page"} <= set(stats), stats)
        self.assertEqual(stats["insert_logs"].count, 1)
        self.assertGreater(stats["insert_logs"].sum_run, 0.0)
        metrics = Metrics(self.store, Clock())
        text = _exposition(metrics)
        self.assertIn('flm_store_query_seconds_count{query="insert_logs"} 1.0', text)
        self.assertIn('flm_store_query_wait_seconds_bucket{le="+Inf",query="logs_page"} 1.0',
                      text)

    async def test_a_damaged_database_is_refused(self) -> None:
        api = await self.store.create_api(api_fields(1))
        await self.store.insert_logs([log_row(api.id, T0 + i, path="/x" * 200)
                                      for i in range(3000)], {})
        await self.store.stopService()
        data = bytearray(self.path.read_bytes())
        page = 4096
        self.assertGreater(len(data), 20 * page)
        for at in range(3 * page, len(data) - page, 2 * page):  # garble every other page
            data[at + 100:at + 400] = b"\xa5" * 300
        self.path.write_bytes(bytes(data))
        with self.assertRaises(RuntimeError) as e:
            Store(self.path).open()
        self.assertIn("is damaged", str(e.exception))

    async def test_deleting_an_api_answers_before_its_rows_are_gone(self) -> None:
        one = await self.store.create_api(api_fields(1))
        two = await self.store.create_api(api_fields(2))
        await self.store.insert_logs([log_row(one.id, T0 + i) for i in range(40)]
                                     + [log_row(two.id, T0)] * 3, {})
        purged: list[int] = []
        real = self.store.run_write

        def counting(name: str, fn: Any, *args: Any) -> Any:
            return real(name, fn, *args).addCallback(
                lambda n: (purged.append(n) if name == "purge_api_logs" else None) or n)
        self.store.run_write = counting  # type: ignore[method-assign]
        self.store.purge_batch = 5
        self.assertIs(await self.store.delete_api(one.id), True)
        self.assertEqual(purged, [])  # answered before any batch of its rows went
        self.assertIsNone(await self.store.get_api(one.id))
        await until(lambda: self.store.purged())
        self.assertEqual(await self.count(), 3)
        self.assertGreaterEqual(len(purged), 8)
        self.assertEqual(await self.count(  # its tombstone stays, purged
            "SELECT count(*) FROM deleted_apis WHERE purged_at IS NULL"), 0)

    async def test_a_purge_cut_short_resumes_at_the_next_start(self) -> None:
        one = await self.store.create_api(api_fields(1))
        await self.store.insert_logs([log_row(one.id, T0 + i) for i in range(30)], {})
        self.store.purge_batch = 5
        await self.store.delete_api(one.id)
        await self.store.stopService()  # stops after the batch under way
        again = Store(self.path)
        again.startService()
        self.addCleanup(again.stopService)
        await until(lambda: again.purged())
        rows = await again.run_read("t", lambda c: c.execute(
            "SELECT count(*) FROM request_logs").fetchone()[0])
        self.assertEqual(rows, 0)

    async def test_rollups_lost_in_a_crash_are_rebuilt_at_start(self) -> None:
        api = await self.store.create_api(api_fields(1))
        other = await self.store.create_api(api_fields(2))
        m0 = int(T0) // 60 * 60
        # minute m0 was rolled up; the rows of m0+60 and m0+120 were written, their
        # rollups lost in the crash; a row of m0 itself is already counted.
        await logs.upsert_metrics(self.store, [[api.id, m0, 1, 0, 10.0, 10.0, 5.0, 3, 4]])
        await self.store.insert_logs(
            [log_row(api.id, m0 + 5)]
            + [log_row(api.id, m0 + 61 + i, status=500 if i == 0 else 200) for i in range(3)]
            + [log_row(api.id, m0 + 121), log_row(other.id, m0 + 90)], {})
        await self.store.stopService()
        store = Store(self.path)
        store.startService()
        self.addCleanup(store.stopService)
        clock = Clock()
        clock.advance(m0 + 600)
        metrics = Metrics(store, clock, interval=60)
        metrics.startService()
        # a row recorded after the start is counted once, by the running rollups
        metrics.observe(log_row(api.id, m0 + 125))
        await metrics.stopService()
        got = await store.run_read("t", lambda c: c.execute(
            "SELECT api_id, bucket_start, request_count, error_count FROM "
            "performance_metrics ORDER BY api_id, bucket_start").fetchall())
        self.assertEqual(got, [(api.id, m0, 1, 0), (api.id, m0 + 60, 3, 1),
                               (api.id, m0 + 120, 2, 0), (other.id, m0 + 60, 1, 0)])

    async def test_a_rebuild_takes_only_its_own_nodes_rows(self) -> None:
        """Another node's rows are in its own memory, rolled up by it: counted once."""
        api = await self.store.create_api(api_fields(1))
        m0 = int(T0) // 60 * 60
        await logs.upsert_metrics(self.store, [[api.id, m0, 1, 0, 10.0, 10.0, 5.0, 3, 4]])
        await self.store.insert_logs([log_row(api.id, m0 + 61, node="a"),
                                      log_row(api.id, m0 + 62, node="b"),
                                      log_row(api.id, m0 + 63)], {})
        await self.store.stopService()
        store = Store(self.path)
        store.startService()
        self.addCleanup(store.stopService)
        clock = Clock()
        clock.advance(m0 + 600)
        metrics = Metrics(store, clock, interval=60, node="a")
        metrics.startService()
        await metrics.stopService()
        got = await store.run_read("t", lambda c: c.execute(
            "SELECT bucket_start, request_count FROM performance_metrics "
            "ORDER BY bucket_start").fetchall())
        self.assertEqual(got, [(m0, 1), (m0 + 60, 2)])  # a's row and the one without a node


    async def test_a_checkpoint_never_waits_for_a_reader(self) -> None:
        api = await self.store.create_api(api_fields(1))
        await self.store.insert_logs([log_row(api.id, T0)] * 50, {})
        entered, release = threading.Event(), threading.Event()

        def long_read(c: Any) -> None:
            c.execute("SELECT count(*) FROM request_logs").fetchone()
            entered.set()
            release.wait(30)
        reading = self.store.run_read("long_read", long_read)
        self.addCleanup(release.set)
        await until(entered.is_set)
        await self.store.insert_logs([log_row(api.id, T0)] * 50, {})
        await self.store.checkpoint()  # would wait busy_timeout (5 s) for the reader
        self.assertLess(self.store.timings.queries["wal_checkpoint"].sum_run, 1.0)
        release.set()
        await reading
        await self.store.checkpoint()
        self.assertEqual(self.path.with_name("flm.sqlite3-wal").stat().st_size, 0)


def _exposition(metrics: Metrics) -> str:
    from prometheus_client import generate_latest
    return generate_latest(metrics.prometheus).decode()
