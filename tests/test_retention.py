"""Retention: by age and by row count, in small write transactions, on a timer."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from flm.observe.retention import Retention
from flm.store import Store, logs
from tests.pg import OnPostgres, OnSQLite
from tests.test_logs_api import T0, log_row
from tests.test_store import api_fields


class PruneTests(OnSQLite, TestCase):
    def setUp(self) -> None:
        self.store = Store(self.database())
        self.store.startService()
        self.addCleanup(self.store.stopService)
        self.writes: list[int] = []
        real = self.store.run_write

        def counting(name: str, fn: Any, *args: Any) -> Any:
            d = real(name, fn, *args)
            if name.startswith("prune_logs"):
                d.addCallback(lambda n: self.writes.append(n if isinstance(n, int) else n[0]) or n)
            return d
        self.store.run_write = counting  # type: ignore[method-assign]

    async def ids(self) -> list[int]:
        rows = await self.store.run_read("t", lambda c: c.execute(
            "SELECT id FROM request_logs ORDER BY id").fetchall())
        return [r[0] for r in rows]

    async def test_prune_by_age_in_batches(self) -> None:
        # 25 old rows, interleaved by id with 10 new ones (arrival order != id order)
        rows = [log_row(1, T0 - 86400 * 40 + i) for i in range(25)]
        rows[5:5] = [log_row(1, T0 - 60 + i) for i in range(10)]
        await self.store.insert_logs(rows, {})
        deleted = await logs.prune(self.store, T0 - 86400 * 30, max_rows=1000, batch=10)
        self.assertEqual(deleted, 25)
        self.assertEqual(await self.ids(), list(range(6, 16)))
        # by id range, every transaction deleting at most a batch
        self.assertTrue(all(n <= 10 for n in self.writes), self.writes)
        self.assertEqual(sum(self.writes), 25)

    async def test_prune_by_row_count_keeps_the_newest(self) -> None:
        await self.store.insert_logs([log_row(1 + i % 2, T0 + i) for i in range(50)], {})
        deleted = await logs.prune(self.store, T0 - 86400, max_rows=12, batch=7)
        self.assertEqual(deleted, 38)
        self.assertEqual(await self.ids(), list(range(39, 51)))
        self.assertTrue(all(n <= 7 for n in self.writes), self.writes)
        self.assertEqual(await logs.prune(self.store, T0 - 86400, max_rows=12, batch=7), 0)

    async def test_old_rollups_go_too(self) -> None:
        await logs.upsert_metrics(self.store, [
            [1, int(T0 - 86400 * 40) // 60 * 60, 1, 0, 1.0, 1.0, 1.0, 0, 0],
            [1, int(T0) // 60 * 60, 2, 0, 2.0, 1.0, 1.0, 0, 0],
            [2, int(T0 - 86400 * 40) // 60 * 60, 3, 0, 3.0, 1.0, 1.0, 0, 0]])
        await logs.prune(self.store, T0 - 86400 * 30, max_rows=10)
        left = await self.store.run_read("t", lambda c: c.execute(
            "SELECT api_id, request_count FROM performance_metrics").fetchall())
        self.assertEqual(left, [(1, 2)])

    async def test_batch_ids_older_than_a_day_go(self) -> None:
        await self.store.insert_logs([log_row(1, T0)], {}, batch_id="old")
        await self.store.insert_logs([log_row(1, T0)], {}, batch_id="new")
        await self.store.run_write("t", lambda c: c.execute(
            "UPDATE log_batches SET written_at = ? WHERE id = 'old'", (T0 - 86400 - 1,)))
        for gone, purged in ((91, T0 - 86400 - 1), (92, T0)):  # deleted APIs' tombstones
            await self.store.run_write("t", lambda c: c.execute(
                "INSERT INTO deleted_apis (api_id, purged_at) VALUES (?, ?)", (gone, purged)))
        clock = Clock()
        clock.advance(T0)
        retention = Retention(self.store, clock, retention_days=30, max_rows=1000)
        await retention.prune()
        left = await self.store.run_read("t", lambda c: c.execute(
            "SELECT id FROM log_batches").fetchall())
        self.assertEqual([r[0] for r in left], ["new"])
        tombstones = await self.store.run_read("t", lambda c: c.execute(
            "SELECT api_id FROM deleted_apis").fetchall())
        self.assertEqual([r[0] for r in tombstones], [92])

    async def test_keys_daily_usage_goes_with_the_logs_but_never_within_two_months(self) -> None:
        api = await self.store.create_api(api_fields(7))
        key = (await self.store.keys_of(api.id))[0]
        today = int(T0 // 86400)
        await self.store.add_key_usage(
            {(key.id, today - d): [1, 10] for d in (0, 40, 61, 63, 400)}, {})
        clock = Clock()
        clock.advance(T0)

        async def days_left(retention_days: float) -> list[int]:
            await Retention(self.store, clock, retention_days=retention_days,
                            max_rows=1000).prune()
            rows = await self.store.key_usage_since(0)
            return sorted(today - r[1] for r in rows)
        self.assertEqual(await days_left(365), [0, 40, 61, 63])  # the logs' 365 days
        self.assertEqual(await days_left(7), [0, 40, 61])  # two months at the least

    async def test_stop_ends_pruning_after_the_batch_under_way(self) -> None:
        await self.store.insert_logs([log_row(1, T0 - 86400 * 40 + i) for i in range(30)], {})
        clock = Clock()
        clock.advance(T0)
        retention = Retention(self.store, clock, retention_days=30, max_rows=1000,
                              interval=600, batch=10)
        retention.startService()  # prunes at once
        await retention.stopService()
        self.assertLess(len(self.writes), 3)
        self.assertFalse(retention._loop.running)

    async def test_periodic_task(self) -> None:
        clock = Clock()
        clock.advance(T0)
        retention = Retention(self.store, clock, retention_days=1, max_rows=1000,
                              interval=600, batch=10)
        retention.startService()
        self.addCleanup(retention.stopService)
        await retention.prune()
        self.assertEqual(retention.deleted, 0)
        await self.store.insert_logs([log_row(1, T0 - 86400 + 300 + i) for i in range(5)]
                                     + [log_row(1, T0)], {})
        clock.advance(600)  # 5 rows are now older than a day
        await retention._running if retention._running else None
        self.assertEqual(retention.deleted, 5)
        self.assertEqual(len(await self.ids()), 1)


class PrunePostgresTests(OnPostgres, PruneTests):
    """Retention on PostgreSQL."""
