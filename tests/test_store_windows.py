"""Time windows as id bounds (flm.store.spans): exactly right with rows whose
``created_at`` is out of order relative to ``id``, and searched by id range."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flm.store import logs, spans
from tests.pg import SyncOnPostgres
from tests.test_logs_api import T0, SyncStore, log_row, now

# (api, status, how many seconds before its record time the request arrived)
rows_st = st.lists(st.tuples(st.integers(1, 3), st.sampled_from((200, 404, 500, 503)),
                             st.floats(0, 30)), max_size=120)
batches_st = st.lists(st.integers(1, 20), min_size=1, max_size=10)
time_st = st.one_of(st.none(), st.floats(-10, 130))


def store_with(rows: list[tuple[int, int, float]], batches: list[int]) -> tuple[Any, list]:
    """Rows recorded one a second (ids in that order), arrivals up to 30 s earlier,
    written in batches as the log buffer flushes them."""
    store = SyncStore()
    made = [log_row(api, T0 + i - early, status) for i, (api, status, early) in enumerate(rows)]
    i = 0
    for n in batches * (len(made) // max(1, sum(batches)) + 1):
        if i >= len(made):
            break
        store.insert(made[i:i + n])
        i += n
    return store, made


class WindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(spans, "SHIFT", 2)  # blocks of 4 ids, so windows cross many blocks

    @settings(derandomize=True, deadline=None, max_examples=200,
              suppress_health_check=[HealthCheck.differing_executors])  # both engines
    @given(rows=rows_st, batches=batches_st, since=time_st, until=time_st,
           api=st.one_of(st.none(), st.integers(1, 3)),
           status=st.sampled_from([None, "5xx", "503"]), limit=st.integers(1, 9))
    def test_window_pages_are_exact(self, rows: list[Any], batches: list[int],
                                    since: float | None, until: float | None,
                                    api: int | None, status: str | None, limit: int) -> None:
        store, made = store_with(rows, batches)
        lo = None if since is None else T0 + since
        hi = None if until is None else T0 + until
        want = [i + 1 for i, r in enumerate(made)
                if (lo is None or r[1] >= lo) and (hi is None or r[1] < hi)
                and (api is None or r[0] == api)
                and (status is None or (r[4] // 100 == 5 if status == "5xx" else r[4] == 503))]
        got, cursor = [], None
        while True:
            items, cursor = now(logs.logs_page(store, api, limit, cursor, status, lo, hi))
            got += [item["id"] for item in items]
            if cursor is None:
                break
        self.assertEqual(got, want[::-1])

    @settings(derandomize=True, deadline=None, max_examples=100,
              suppress_health_check=[HealthCheck.differing_executors])  # both engines
    @given(rows=rows_st, batches=batches_st, older=st.floats(-10, 130),
           batch=st.integers(1, 7))
    def test_retention_by_id_range_is_exact(self, rows: list[Any], batches: list[int],
                                            older: float, batch: int) -> None:
        store, made = store_with(rows, batches)
        now(logs.prune(store, T0 + older, max_rows=10_000, batch=batch))
        left = [r[0] for r in store.conn.execute("SELECT id FROM request_logs ORDER BY id")]
        self.assertEqual(left, [i + 1 for i, r in enumerate(made) if r[1] >= T0 + older])
        if left:  # the spans of blocks wholly pruned are gone too
            first = store.conn.execute("SELECT min(block) FROM request_log_spans").fetchone()
            self.assertEqual(first[0], left[0] >> spans.SHIFT)


class PlanTests(SynchronousTestCase):
    """Every admin page is a search of an index or id range, whatever the window."""

    def setUp(self) -> None:
        self.patch(spans, "SHIFT", 4)
        self.store = SyncStore()
        rng = random.Random(3)
        self.store.insert([log_row(rng.randint(1, 20), T0 + i, rng.choice((200, 503)))
                           for i in range(3000)])

    def plan(self, *args: Any) -> str:
        def txn(c: Any) -> str:
            lo, hi = spans.bounds(c, args[4], args[5])
            sql, params = logs.logs_sql(*args, lo, hi)
            return " ".join(r[-1] for r in c.execute("EXPLAIN QUERY PLAN " + sql, params))
        return str(now(self._read(txn)))

    async def _read(self, txn: Any) -> Any:
        return await self.store.run_read("plan", txn)

    def test_plans(self) -> None:
        old = (T0 + 100, T0 + 200)
        for analyzed in (False, True):
            if analyzed:
                self.store.conn.execute("ANALYZE")
            for args, index in (
                    ((None, 51, None, None, *old), "INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
                    ((3, 51, None, None, *old), "request_logs_api_id (api_id=? AND id>? AND "
                                                 "id<?)"),
                    ((None, 51, None, (5, None), None, None), "request_logs_class (<expr>=?)"),
                    ((None, 51, None, (5, 503), *old), "request_logs_class (<expr>=? AND "
                                                        "id>? AND id<?)"),
                    ((3, 51, None, (5, None), *old), "request_logs_api_class (api_id=? AND "
                                                      "<expr>=? AND id>? AND id<?)")):
                plan = self.plan(*args)
                self.assertIn(index, plan, args)
                self.assertNotIn("TEMP B-TREE", plan)

    def test_no_created_at_index(self) -> None:
        names = {r[0] for r in self.store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        self.assertNotIn("request_logs_created_at", names)
        self.assertIn("request_logs_class", names)


class WindowPostgresTests(SyncOnPostgres, WindowTests):
    """Windows as id bounds on PostgreSQL (ids from a sequence, batches through COPY)."""

    sync_modules = (__name__,)
