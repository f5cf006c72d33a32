"""Per-minute rollups (matching the rows they summarise), coarse buckets, ``/metrics``."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from flm.admin.app import AdminApp
from flm.admin.observe import Observe
from flm.observe.logbuffer import LogBuffer
from flm.observe.metrics import Metrics
from flm.observe.minutes import p95
from flm.store import Store, logs
from tests.pg import OnPostgres, OnSQLite, SyncOnPostgres
from tests.test_logs_api import T0, SyncStore, api_fields, log_row, now


def random_rows(rng: random.Random, n: int, span: float, apis: tuple[int, ...]
                ) -> list[tuple[Any, ...]]:
    rows = []
    for _ in range(n):
        status = rng.choice((200, 200, 200, 404, 499, 500, 503))
        ttfb = None if status == 499 else round(rng.uniform(1, 500), 3)
        rows.append(log_row(rng.choice(apis), T0 + rng.uniform(0, span), status,
                            response_ms=round(rng.uniform(1, 3000), 3), ttfb_ms=ttfb,
                            prompt_tokens=rng.choice((None, 5, 17)),
                            completion_tokens=rng.choice((None, 1, 40))))
    return rows


def expected_rollups(rows: list[tuple[Any, ...]]) -> dict[tuple[int, int], tuple[Any, ...]]:
    """What performance_metrics must hold, computed from the log rows themselves."""
    groups: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    for r in rows:
        groups.setdefault((r[0], int(r[1] // 60 * 60)), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = (len(rs), sum(r[4] >= 500 for r in rs), round(sum(r[8] for r in rs), 6),
                    p95([r[8] for r in rs]), p95([r[6] for r in rs if r[6] is not None]),
                    sum(r[12] or 0 for r in rs), sum(r[13] or 0 for r in rs))
    return out


class RollupTests(OnSQLite, TestCase):
    async def test_rollups_match_the_logged_rows(self) -> None:
        store = Store(self.database())
        store.startService()
        self.addCleanup(store.stopService)
        ids = tuple([(await store.create_api(api_fields(n))).id for n in (1, 2, 3)])
        clock = Clock()
        clock.advance(T0)
        buffer = LogBuffer(store, clock, batch_rows=10_000)
        metrics = Metrics(store, clock, logbuffer=buffer, interval=60)
        buffer.observers.append(metrics.observe)
        metrics.startService()
        rows = random_rows(random.Random(4), 900, 300, ids)
        rows.sort(key=lambda r: r[1])
        # the proxy records rows as requests finish, while the rollup runs every minute
        for r in rows:
            if r[1] + 0.5 > clock.seconds():
                clock.advance(r[1] + 0.5 - clock.seconds())
            buffer.record(r)
            if metrics._rolling is not None:
                await metrics._rolling
        stored = await store.run_read("t", lambda c: c.execute(
            "SELECT count(*) FROM performance_metrics").fetchone()[0])
        self.assertGreater(stored, 0)
        self.assertTrue(metrics.minutes)  # the current minute is still in memory
        late = log_row(ids[0], T0 + 5, 500, response_ms=1.0, ttfb_ms=1.0)  # a late row
        buffer.record(late)
        rows.append(late)
        await buffer.flush()
        await metrics.stopService()  # the final rollup writes every minute left
        self.assertEqual(metrics.minutes, {})

        got = await store.run_read("t", lambda c: c.execute(
            "SELECT api_id, bucket_start, request_count, error_count, sum_response_ms, "
            "p95_response_ms, p95_ttfb_ms, prompt_tokens, completion_tokens "
            "FROM performance_metrics").fetchall())
        # the logs table agrees with the rows recorded
        logged = await store.run_read("t", lambda c: c.execute(
            "SELECT count(*) FROM request_logs").fetchone()[0])
        self.assertEqual(logged, len(rows))
        want = expected_rollups(rows)
        have = {(r[0], r[1]): (r[2], r[3], round(r[4], 6), *r[5:]) for r in got}
        self.assertEqual(set(have), set(want))
        late_key = (ids[0], int(T0))
        for key, value in want.items():
            if key == late_key:  # rolled up twice: counts add, p95 keeps the higher
                self.assertEqual(have[key][:3], value[:3])
                continue
            self.assertEqual(have[key], value, key)

    async def test_failed_rollup_is_retried_once(self) -> None:
        store = SyncStore()
        clock = Clock()
        clock.advance(T0)
        metrics = Metrics(store, clock)
        for i in range(5):
            metrics.observe(log_row(1, T0 + i))
        clock.advance(120)
        real = store.run_write
        store.run_write = lambda *a: (_ for _ in ()).throw(OSError("locked"))  # type: ignore
        self.failureResultOf(metrics.rollup(), OSError)
        self.assertEqual(metrics.minutes[(1, int(T0))].count, 5)
        metrics.observe(log_row(1, T0 + 6))
        store.run_write = real  # type: ignore
        self.successResultOf(metrics.rollup())
        self.successResultOf(metrics.rollup())
        self.assertEqual(store.conn.execute(
            "SELECT request_count FROM performance_metrics").fetchall(), [(6,)])


class BucketTests(SynchronousTestCase):
    def test_bucket_sizes(self) -> None:
        self.assertEqual(logs.bucket_size(0, 86400), 60)
        self.assertEqual(logs.bucket_size(0, 7 * 86400), 900)
        self.assertEqual(logs.bucket_size(0, 30 * 86400), 1800)
        self.assertEqual(logs.bucket_size(0, 365 * 86400), 6 * 3600)
        for days in (1, 2, 7, 30, 90, 365, 3650):
            size = logs.bucket_size(0, days * 86400)
            self.assertLessEqual(days * 86400 / size, logs.MAX_BUCKETS)

    def test_coarse_buckets_sum_the_minutes(self) -> None:
        store = SyncStore()
        clock = Clock()
        clock.advance(T0 + 7 * 86400)
        metrics = Metrics(store, clock)
        rows = random_rows(random.Random(7), 3000, 7 * 86400, (1,))
        for r in rows:
            metrics.observe(r)
        now(metrics._rollup(final=True))
        observe = Observe(store, metrics=metrics, monitor=None, registry=None, logbuffer=None,
                          clock=clock)
        store.get_api = lambda ref: _succeed(SimpleNamespace(id=1))  # type: ignore
        result = now(observe.api_metrics("1", {b"since": [str(T0).encode()]}))
        self.assertEqual(result["bucket_s"], 900)
        self.assertLessEqual(len(result["buckets"]), logs.MAX_BUCKETS)
        self.assertEqual(sum(b["request_count"] for b in result["buckets"]), len(rows))
        errors = sum(b["error_rate"] * b["request_count"] for b in result["buckets"])
        self.assertAlmostEqual(errors, sum(r[4] >= 500 for r in rows))
        self.assertEqual(sum(b["prompt_tokens"] for b in result["buckets"]),
                         sum(r[12] or 0 for r in rows))
        starts = [b["start"] for b in result["buckets"]]
        self.assertEqual(starts, sorted(starts))

    def test_metrics_include_the_current_minute(self) -> None:
        store = SyncStore()
        clock = Clock()
        clock.advance(T0 + 30)
        metrics = Metrics(store, clock)
        metrics.observe(log_row(1, T0 + 1, 200, response_ms=10.0))
        metrics.observe(log_row(1, T0 + 2, 503, response_ms=30.0))
        observe = Observe(store, metrics=metrics, monitor=None, registry=None, logbuffer=None,
                          clock=clock)
        store.get_api = lambda ref: _succeed(SimpleNamespace(id=1))  # type: ignore
        result = now(observe.api_metrics("1", {}))
        self.assertEqual(result["bucket_s"], 60)
        [bucket] = result["buckets"]
        self.assertEqual((bucket["request_count"], bucket["error_rate"],
                          bucket["avg_response_ms"], bucket["p95_response_ms"]),
                         (2, 0.5, 20.0, 30.0))
        # half written, half still in memory: one bucket, merged
        clock.advance(120)
        now(metrics._rollup(final=False))
        metrics.observe(log_row(1, T0 + 3, 200, response_ms=20.0))
        [bucket] = now(observe.api_metrics("1", {}))["buckets"]
        self.assertEqual((bucket["request_count"], bucket["start"]),
                         (3, "2023-11-14T22:14:00.000Z"))


def _succeed(value: Any) -> Any:
    from twisted.internet.defer import succeed
    return succeed(value)


class PrometheusTests(SynchronousTestCase):
    def test_metrics_endpoint_parses(self) -> None:
        clock = Clock()
        gate = SimpleNamespace(in_use=1, waiting=2, limit=1)
        runtime = SimpleNamespace(id=7, config=SimpleNamespace(name="chat", model="m"),
                                  in_flight=3, gate=SimpleNamespace(waiting=4), refused_keys=5)
        registry = SimpleNamespace(runtimes={7: runtime}, upstream=SimpleNamespace(gate=gate))
        buffer = SimpleNamespace(dropped=6, rows=[1, 2])
        metrics = Metrics(SyncStore(), clock, registry=registry, logbuffer=buffer)
        for status, ms in ((200, 12.0), (200, 700.0), (503, 40.0), (404, 2.0)):
            metrics.observe(log_row(7, T0, status, response_ms=ms, ttfb_ms=ms / 2,
                                    prompt_tokens=10, completion_tokens=None))
        observe = Observe(None, metrics=metrics, monitor=None, registry=registry,
                          logbuffer=buffer, clock=clock)
        app = AdminApp(token="t", apis=None, health=None, observe=observe)  # type: ignore
        stub = StubTreq(app.resource())
        response = self.successResultOf(stub.get("http://admin/metrics"))  # no auth
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(
            "text/plain; version=0.0.4"))
        text = self.successResultOf(response.text())
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        self.assertEqual(samples[("flm_requests_total",
                                  (("api", "7"), ("status_class", "2xx")))], 2)
        self.assertEqual(samples[("flm_requests_total",
                                  (("api", "7"), ("status_class", "5xx")))], 1)
        self.assertEqual(samples[("flm_request_duration_seconds_count", (("api", "7"),))], 4)
        self.assertEqual(samples[("flm_request_duration_seconds_bucket",
                                  (("api", "7"), ("le", "0.5")))], 3)
        self.assertAlmostEqual(samples[("flm_request_duration_seconds_sum", (("api", "7"),))],
                               0.754)
        self.assertEqual(samples[("flm_time_to_first_byte_seconds_count", (("api", "7"),))], 4)
        self.assertEqual(samples[("flm_prompt_tokens_total", (("api", "7"),))], 40)
        self.assertEqual(samples[("flm_in_flight", (("api", "7"),))], 3)
        self.assertEqual(samples[("flm_queue_depth", (("api", "7"),))], 4)
        self.assertEqual(samples[("flm_refused_keys_total", (("api", "7"),))], 5)
        self.assertEqual(samples[("flm_api_info",
                                  (("api", "7"), ("model", "m"), ("name", "chat")))], 1)
        self.assertEqual(samples[("flm_backend_queue_depth", ())], 2)
        self.assertEqual(samples[("flm_log_rows_dropped_total", ())], 6)
        self.assertGreater(samples[("process_resident_memory_bytes", ())], 1_000_000)
        # a private registry: nothing of the global default (python_gc_*, python_info)
        self.assertFalse(any(name.startswith("python_") for name, _ in samples))

    def test_observer_never_raises(self) -> None:
        metrics = Metrics(SyncStore(), Clock())
        metrics.observe(("garbage",))
        self.assertEqual(len(self.flushLoggedErrors(IndexError)), 1)


def test_samples_past_the_exact_limit_keep_p95_within_two_percent_and_never_low() -> None:
    from flm.observe.minutes import Samples
    from flm.observe.minutes import p95 as exact_p95
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.2) for _ in range(20_000)]
    whole, left, right = Samples(), Samples(), Samples()
    for i, v in enumerate(values):
        whole.add(v)
        (left if i % 3 else right).add(v)
    left.merge(right)
    exact = exact_p95(values)
    assert whole.buckets is not None and len(whole.buckets) < 1000
    for estimate in (whole.p95(), left.p95()):
        assert exact <= estimate <= exact * 1.0201


def test_samples_stay_exact_while_few() -> None:
    from flm.observe.minutes import Samples
    from flm.observe.minutes import p95 as exact_p95
    s = Samples()
    for v in (5.0, 1.0, 3.0):
        s.add(v)
    assert s.buckets is None and s.p95() == exact_p95([5.0, 1.0, 3.0]) == 5.0


class RollupPostgresTests(OnPostgres, RollupTests):
    """Rollups (the upsert that adds and keeps the higher p95) on PostgreSQL."""


class BucketPostgresTests(SyncOnPostgres, BucketTests):
    """Coarse buckets (integer division in SQL) on PostgreSQL."""

    sync_modules = (__name__,)
