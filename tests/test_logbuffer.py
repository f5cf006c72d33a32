"""LogBuffer: flush on size, on time and on stop; retries without duplicates; bounded."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from flm.observe.logbuffer import LogBuffer
from flm.store import Store
from flm.store.db import _INSERT_LOG, LOG_COLUMNS
from tests.pg import OnPostgres, OnSQLite

T0 = 1_700_000_000.0


def row(i: int, api_id: int = 1) -> tuple[Any, ...]:
    values = dict(api_id=api_id, created_at=T0 + i, method="POST", path="/v1/chat/completions",
                  status=200, queue_ms=0.1, ttfb_ms=5.0, upstream_ms=9.0, response_ms=10.0,
                  bytes_in=10, bytes_out=20, model="m", prompt_tokens=1, completion_tokens=2,
                  request_id=f"r{i}", error=None)
    return tuple(values.get(c) for c in LOG_COLUMNS)


class FakeStore:
    """Records batches. Like the real store it answers later (on the clock's next turn),
    never synchronously; ``hold`` leaves inserts pending, ``fail`` fails the next ones."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.batches: list[list[Any]] = []
        self.pending: list[Deferred[None]] = []
        self.hold = False
        self.fail = 0

    def insert_logs(self, rows: Any, last_used: dict[int, float],
                    batch_id: str | None = None) -> Deferred[None]:
        rows = list(rows)
        d: Deferred[None] = Deferred()
        if self.fail:
            self.fail -= 1
            self.clock.callLater(0, d.errback, OSError("disk I/O error"))
            return d
        d.addCallback(lambda _: self.batches.append(rows))
        if self.hold:
            self.pending.append(d)
        else:
            self.clock.callLater(0, d.callback, None)
        return d

    @property
    def written(self) -> list[Any]:
        return [r for b in self.batches for r in b]


class BufferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore(self.clock)
        self.buffer = LogBuffer(self.store, self.clock, interval=1.0, batch_rows=3, max_rows=5)
        self.buffer.startService()
        self.addCleanup(lambda: self.buffer.running and self.buffer.stopService())

    def test_flush_on_size(self) -> None:
        for i in range(2):
            self.buffer.record(row(i))
        self.assertEqual(self.store.batches, [])
        self.buffer.record(row(2))
        self.assertEqual(self.buffer.rows, [])  # taken at once, written on the next turn
        self.clock.advance(0)
        self.assertEqual(self.store.batches, [[row(0), row(1), row(2)]])
        self.assertEqual(self.buffer.rows, [])

    def test_flush_on_time(self) -> None:
        self.buffer.record(row(0))
        self.clock.advance(0.9)
        self.assertEqual(self.store.batches, [])
        self.clock.advance(0.1)
        self.clock.advance(0)
        self.assertEqual(self.store.batches, [[row(0)]])
        self.assertEqual(self.buffer.written, 1)

    def test_flush_on_stop(self) -> None:
        self.buffer.record(row(0))
        self.buffer.record(row(1))
        d = self.buffer.stopService()
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.store.written, [row(0), row(1)])
        self.assertFalse(self.buffer._loop.running)

    def test_stop_waits_for_the_flush_under_way(self) -> None:
        self.store.hold = True
        for i in range(3):
            self.buffer.record(row(i))  # a full batch: its flush is now pending
        self.buffer.record(row(3))
        d = self.buffer.stopService()
        self.assertNoResult(d)
        self.store.hold = False
        self.store.pending.pop().callback(None)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.store.written, [row(i) for i in range(4)])

    def test_rows_that_arrive_during_a_write_wait_for_a_full_batch_or_the_tick(self) -> None:
        """Not chased in small batches, each a transaction and an fsync of its own."""
        self.store.hold = True
        for i in range(3):
            self.buffer.record(row(i))  # a full batch: being written
        self.buffer.record(row(3))
        self.store.hold = False
        self.store.pending.pop().callback(None)
        self.clock.advance(0)
        self.assertEqual(self.store.batches, [[row(0), row(1), row(2)]])
        self.assertEqual(self.buffer.rows, [row(3)])
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.assertEqual(self.store.batches[1:], [[row(3)]])

    def test_full_batches_that_arrive_during_a_write_follow_at_once(self) -> None:
        self.store.hold = True
        for i in range(3):
            self.buffer.record(row(i))
        for i in range(3, 7):
            self.buffer.record(row(i))  # one more full batch and one row
        self.store.hold = False
        self.store.pending.pop().callback(None)
        self.clock.advance(0)
        self.assertEqual(self.store.batches, [[row(0), row(1), row(2)], [row(3), row(4), row(5)]])
        self.assertEqual(self.buffer.rows, [row(6)])

    def test_failed_flush_keeps_rows_in_order(self) -> None:
        self.store.fail = 1
        self.buffer.record(row(0))
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.assertEqual(self.store.batches, [])
        self.assertFalse(self.buffer.healthy)
        self.assertEqual(self.buffer.rows, [row(0)])
        self.buffer.record(row(1))
        self.clock.advance(1.0)  # the loop kept running after the failure
        self.clock.advance(0)
        self.assertEqual(self.store.written, [row(0), row(1)])
        self.assertTrue(self.buffer.healthy)

    def test_bounded_buffer_counts_drops(self) -> None:
        seen: list[Any] = []
        self.buffer.observers.append(seen.append)
        self.store.hold = True
        for i in range(9):
            self.buffer.record(row(i))
        # 3 rows in the pending flush, 5 buffered (max_rows), 1 dropped
        self.assertEqual(len(self.buffer.rows), 5)
        self.assertEqual(self.buffer.dropped, 1)
        self.assertEqual(len(seen), 9)  # observers (metrics) still see every row
        self.store.hold = False
        self.store.pending.pop().callback(None)
        d = self.buffer.stopService()
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.store.written, [row(i) for i in range(8)])


class RetryTests(OnSQLite, TestCase):
    """A flush whose transaction fails after inserting is rolled back and retried: no
    duplicates in the real database."""

    async def test_failing_flush_retried_without_duplicates(self) -> None:
        store = Store(self.database())
        store.startService()
        self.addCleanup(store.stopService)
        real_insert = store.insert_logs
        failures = [1]

        def insert_logs(rows: Any, last_used: Any, batch_id: Any = None) -> Any:
            if failures[0]:
                failures[0] -= 1

                def txn(c: Any) -> None:
                    c.executemany(_INSERT_LOG, list(rows))
                    raise OSError("the disk went away mid-transaction")
                return store.run_write("insert_logs", txn)
            return real_insert(rows, last_used, batch_id)
        store.insert_logs = insert_logs  # type: ignore[method-assign]

        clock = Clock()
        buffer = LogBuffer(store, clock, interval=1.0, batch_rows=100, max_rows=1000)
        buffer.startService()
        for i in range(10):
            buffer.record(row(i))
        await buffer.flush()
        self.assertFalse(buffer.healthy)
        self.assertEqual(len(buffer.rows), 10)
        await buffer.stopService()
        ids = await store.run_read("t", lambda c: c.execute(
            "SELECT request_id FROM request_logs ORDER BY id").fetchall())
        self.assertEqual([r[0] for r in ids], [f"r{i}" for i in range(10)])
        self.assertTrue(buffer.healthy)


    async def test_a_batch_whose_commit_answer_was_lost_is_not_written_twice(self) -> None:
        """The database committed, then went away before saying so (PostgreSQL restarted
        at that moment): the retry finds its batch id and writes nothing."""
        store = Store(self.database())
        store.startService()
        self.addCleanup(store.stopService)
        real_insert = store.insert_logs
        lost = [1]

        async def insert_logs(rows: Any, last_used: Any, batch_id: Any = None) -> bool:
            written = await real_insert(rows, last_used, batch_id)
            if lost[0]:
                lost[0] -= 1
                raise OSError("the connection is lost")
            return written
        store.insert_logs = insert_logs  # type: ignore[method-assign]
        buffer = LogBuffer(store, Clock(), interval=1.0, batch_rows=100, max_rows=1000)
        buffer.startService()
        for i in range(10):
            buffer.record(row(i))
        await buffer.flush()
        self.assertFalse(buffer.healthy)
        buffer.record(row(10))  # joins after the failed batch, written in the next one
        await buffer.stopService()
        ids = await store.run_read("t", lambda c: c.execute(
            "SELECT request_id FROM request_logs ORDER BY id").fetchall())
        self.assertEqual([r[0] for r in ids], [f"r{i}" for i in range(11)])
        self.assertTrue(buffer.healthy)


class RetryPostgresTests(OnPostgres, RetryTests):
    """A failed flush rolled back and retried on PostgreSQL."""
