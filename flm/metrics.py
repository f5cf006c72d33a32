"""Performance metrics: per-minute rollups into the store, and Prometheus collectors.

:class:`Metrics` observes every log row as the proxy records it (a ``LogBuffer``
observer): it keeps per-API, per-minute aggregates in memory (by arrival time) and feeds
Prometheus counters and histograms. A ``LoopingCall`` writes settled minutes to
``performance_metrics`` every ``interval`` seconds; ``stopService`` writes the rest.
Everything Prometheus sees lives in a private ``CollectorRegistry``, never the global one.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Iterator, Sequence

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from flm.periodic import PeriodicService
from flm.store import logs

log = Logger()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
# Positions in a log row (ordered as flm.store.db.LOG_COLUMNS).
_API, _AT, _STATUS, _TTFB, _RESPONSE, _PROMPT, _COMPLETION, _ERROR = 0, 1, 4, 6, 8, 12, 13, 15
#: Log-row errors of a response the backend cut after its status was sent.
BACKEND_CUTS = frozenset({"backend_disconnected", "backend_timeout"})


def error_kind(row: Sequence[Any]) -> str | None:
    """Why a row counts in ``error_rate``: ``status`` (>= 500), ``cut`` (the backend
    failed after the status was sent), or None."""
    if row[_STATUS] >= 500:
        return "status"
    if row[_ERROR] in BACKEND_CUTS:
        return "cut"
    return None


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile (a value that occurred); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Samples:
    """Durations for a p95: kept exactly up to ``EXACT`` values, then as counts in
    log-spaced buckets 2% wide, so a busy minute costs a few KiB, not 32 bytes a request.
    In bucket form the p95 is its bucket's upper edge: at most 2% high, never low."""

    EXACT = 512
    _STEP = math.log(1.02)
    __slots__ = ("values", "buckets")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.buckets: dict[int, int] | None = None

    def add(self, value: float) -> None:
        if self.buckets is None:
            self.values.append(value)
            if len(self.values) > self.EXACT:
                self._fold()
        else:
            k = self._bucket(value)
            self.buckets[k] = self.buckets.get(k, 0) + 1

    def merge(self, other: "Samples") -> None:
        if other.buckets is None:
            for value in other.values:
                self.add(value)
            return
        if self.buckets is None:
            self._fold()
        assert self.buckets is not None
        for k, n in other.buckets.items():
            self.buckets[k] = self.buckets.get(k, 0) + n

    def p95(self) -> float | None:
        if self.buckets is None:
            return p95(self.values)
        total = sum(self.buckets.values())
        rank = max(1, math.ceil(0.95 * total))
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= rank:
                return math.exp((k + 1) * self._STEP)
        return None  # pragma: no cover - rank <= total

    def _bucket(self, value: float) -> int:
        return math.floor(math.log(max(value, 1e-3)) / self._STEP)

    def _fold(self) -> None:
        self.buckets = {}
        values, self.values = self.values, []
        for value in values:
            k = self._bucket(value)
            self.buckets[k] = self.buckets.get(k, 0) + 1


class Minute:
    """One API's requests in one minute: exact counts and sums, samples for the p95s."""

    __slots__ = ("count", "errors", "sum_ms", "response_ms", "ttfb_ms", "prompt",
                 "completion")

    def __init__(self) -> None:
        self.count = self.errors = self.prompt = self.completion = 0
        self.sum_ms = 0.0
        self.response_ms = Samples()
        self.ttfb_ms = Samples()

    def add(self, row: Sequence[Any]) -> None:
        self.count += 1
        if row[_STATUS] >= 500 or row[_ERROR] in BACKEND_CUTS:
            self.errors += 1
        if row[_RESPONSE] is not None:
            self.sum_ms += row[_RESPONSE]
            self.response_ms.add(row[_RESPONSE])
        if row[_TTFB] is not None:
            self.ttfb_ms.add(row[_TTFB])
        self.prompt += row[_PROMPT] or 0
        self.completion += row[_COMPLETION] or 0

    def merge(self, other: "Minute") -> None:
        self.count += other.count
        self.errors += other.errors
        self.sum_ms += other.sum_ms
        self.response_ms.merge(other.response_ms)
        self.ttfb_ms.merge(other.ttfb_ms)
        self.prompt += other.prompt
        self.completion += other.completion

    def row(self, api_id: int, start: int) -> list[Any]:
        """Ordered as ``flm.store.logs.METRIC_COLUMNS``."""
        return [api_id, start, self.count, self.errors, self.sum_ms, self.response_ms.p95(),
                self.ttfb_ms.p95(), self.prompt, self.completion]


class Metrics(PeriodicService):
    """Per-minute rollups and the Prometheus registry; ``observe`` is the row observer."""

    name = "metrics"

    def __init__(self, store: Any, clock: IReactorTime, *, registry: Any = None,
                 logbuffer: Any = None, interval: float = 60.0, settle_s: float = 60.0
                 ) -> None:
        super().__init__(clock, interval)
        self._store = store
        self.settle_s = settle_s
        self.minutes: dict[tuple[int, int], Minute] = {}
        self._rolling: Deferred[None] | None = None
        self.prometheus = CollectorRegistry(auto_describe=True)
        r = self.prometheus
        self._requests = Counter("flm_requests", "Requests that passed the key check, by "
                                 "API id and status class.", ["api", "status_class"], registry=r)
        self._latency = Histogram("flm_request_duration_seconds", "Arrival to last byte sent "
                                  "to the client.", ["api"], buckets=LATENCY_BUCKETS, registry=r)
        self._ttfb = Histogram("flm_time_to_first_byte_seconds", "Admitted to first byte from "
                               "the backend.", ["api"], buckets=LATENCY_BUCKETS, registry=r)
        self._errors = Counter("flm_request_errors", "Requests counted in error_rate: "
                               "answered with a status >= 500 (kind=status) or cut by a "
                               "backend failure after the status was sent (kind=cut).",
                               ["api", "kind"], registry=r)
        self._prompt = Counter("flm_prompt_tokens", "Prompt tokens the backend reported.",
                               ["api"], registry=r)
        self._completion = Counter("flm_completion_tokens", "Completion tokens the backend "
                                   "reported.", ["api"], registry=r)
        self._children: dict[int, tuple[Any, ...]] = {}
        # Deleted APIs (ids are never reused): rows of requests that end after the delete
        # must not bring their series, or a rollup, back.
        self._deleted: set[int] = set()
        r.register(RuntimeCollector(registry, logbuffer))
        if getattr(store, "timings", None) is not None:
            r.register(store.timings)  # flm_store_query_seconds, ..._wait_seconds by query

    # observing rows (on the request path: cheap, and never raises)

    def observe(self, row: Sequence[Any]) -> None:
        try:
            api_id = row[_API]
            if api_id in self._deleted:
                return
            key = (api_id, int(row[_AT] // 60) * 60)
            minute = self.minutes.get(key)
            if minute is None:
                minute = self.minutes[key] = Minute()
            minute.add(row)
            self._count(api_id, row)
        except Exception:
            log.failure("metrics could not count a log row")

    def _count(self, api_id: int, row: Sequence[Any]) -> None:
        children = self._children.get(api_id)
        if children is None:
            a = str(api_id)
            children = self._children[api_id] = (
                {}, self._latency.labels(a), self._ttfb.labels(a), self._prompt.labels(a),
                self._completion.labels(a))
        by_class, latency, ttfb, prompt, completion = children
        cls = status_class(row[_STATUS])
        counter = by_class.get(cls)
        if counter is None:
            counter = by_class[cls] = self._requests.labels(str(api_id), cls)
        counter.inc()
        kind = error_kind(row)
        if kind is not None:
            self._errors.labels(str(api_id), kind).inc()
        if row[_RESPONSE] is not None:
            latency.observe(row[_RESPONSE] / 1000.0)
        if row[_TTFB] is not None:
            ttfb.observe(row[_TTFB] / 1000.0)
        if row[_PROMPT]:
            prompt.inc(row[_PROMPT])
        if row[_COMPLETION]:
            completion.inc(row[_COMPLETION])

    def forget(self, api_id: int) -> None:
        """The API was deleted: drop its series and its minutes not yet rolled up."""
        self._deleted.add(api_id)
        for key in [k for k in self.minutes if k[0] == api_id]:
            del self.minutes[key]
        children = self._children.pop(api_id, None)
        if children is None:
            return
        a = str(api_id)
        for cls in children[0]:
            self._requests.remove(a, cls)
        for family in (self._latency, self._ttfb, self._prompt, self._completion):
            family.remove(a)

    def pending(self, api_id: int, since: float, until: float) -> list[list[Any]]:
        """Minutes not yet in the store, as rollup rows: fresh data for the metrics API."""
        return [m.row(a, start) for (a, start), m in sorted(self.minutes.items())
                if a == api_id and since // 60 * 60 <= start < until]

    # rolling up

    def rollup(self, final: bool = False) -> Deferred[None]:
        """Write minutes over for ``settle_s`` (every minute when ``final``); one rollup at
        a time. Rows are recorded when requests end, so a minute waits for its stragglers;
        one later still is added to the stored minute (counts add, p95 keeps the higher)."""
        if self._rolling is not None:
            d: Deferred[None] = Deferred()
            self._rolling.addBoth(lambda _: self.rollup(final).chainDeferred(d))
            return d
        d = self._rolling = Deferred.fromCoroutine(self._rollup(final))

        def done(result: Any) -> Any:
            if self._rolling is d:
                self._rolling = None
            return result
        return d.addBoth(done)  # also when the store answered at once

    async def _rollup(self, final: bool) -> None:
        now = self._clock.seconds()
        done = {k: m for k, m in self.minutes.items() if final or k[1] + 60 + self.settle_s <= now}
        for k in done:
            del self.minutes[k]
        if not done:
            return
        try:
            await logs.upsert_metrics(self._store, [m.row(*k) for k, m in done.items()])
        except BaseException:
            # Nothing was written (one transaction): put the minutes back for next time.
            for k, m in done.items():
                if k in self.minutes:
                    m.merge(self.minutes[k])
                self.minutes[k] = m
            raise

    def tick(self) -> Deferred[None]:
        return self.rollup()

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._rebuild())
        d.addErrback(lambda f: log.failure("rebuilding rollups lost in a crash failed", f))
        if not d.called:  # rollups (and the final one) wait for it
            self._rolling = d
            d.addBoth(lambda _: setattr(self, "_rolling", None))

    async def _rebuild(self) -> None:
        """Roll up the rows stored after the newest stored minute: a crash lost their
        rollups. Only rows older than the store's opening: the ones after it are counted
        as they are observed. One transaction, so a crash here loses nothing either."""
        upto = getattr(self._store, "opened_last_id", 0)
        if not upto:
            return
        minutes: dict[tuple[int, int], Minute] = {}
        async for rows in logs.unrolled_rows(self._store, upto):
            for row in rows:
                key = (row[_API], int(row[_AT] // 60) * 60)
                minute = minutes.get(key)
                if minute is None:
                    minute = minutes[key] = Minute()
                minute.add(row)
        if minutes:
            await logs.upsert_metrics(self._store, [m.row(*k) for k, m in minutes.items()])
            log.info("rebuilt {n} minutes of rollups lost in a crash", n=len(minutes))

    async def final(self) -> None:
        for attempt in range(3):
            try:
                await self.rollup(final=True)
                return
            except CancelledError:
                raise
            except Exception as e:
                log.error("final metrics rollup failed (attempt {n}): {e}", n=attempt + 1, e=e)


class RuntimeCollector:
    """Gauges read live at scrape time: in flight, queues, dropped rows, refused keys, RSS."""

    def __init__(self, registry: Any, logbuffer: Any) -> None:
        self._registry = registry
        self._logbuffer = logbuffer
        self._process: psutil.Process | None = None

    def _this_process(self) -> psutil.Process:
        """Built at the first scrape, never before ``twistd`` forks (it would watch the parent)."""
        if self._process is None or self._process.pid != os.getpid():
            self._process = psutil.Process()
        return self._process

    def describe(self) -> Iterable[Any]:
        return []  # the families vary with the running APIs; collected at scrape time

    def collect(self) -> Iterator[Any]:
        runtimes = list(getattr(self._registry, "runtimes", {}).values())
        info = GaugeMetricFamily("flm_api_info", "Running APIs: id, name and model.",
                                 labels=["api", "name", "model"])
        in_flight = GaugeMetricFamily("flm_in_flight", "Requests being served.",
                                      labels=["api"])
        queued = GaugeMetricFamily("flm_queue_depth", "Requests waiting for the API's slot.",
                                   labels=["api"])
        refused = CounterMetricFamily("flm_refused_keys", "Requests refused for a bad key "
                                      "since the API started.", labels=["api"])
        throttled = CounterMetricFamily("flm_refused_keys_throttled", "Of the refused keys, "
                                        "those answered 429: too many wrong keys from one "
                                        "address.", labels=["api"])
        for rt in runtimes:
            a = str(rt.id)
            info.add_metric([a, rt.config.name, rt.config.model], 1)
            in_flight.add_metric([a], rt.in_flight)
            queued.add_metric([a], rt.gate.waiting)
            refused.add_metric([a], rt.refused_keys)
            throttled.add_metric([a], getattr(rt, "throttled_keys", 0))
        yield from (info, in_flight, queued, refused, throttled)
        gate = getattr(getattr(self._registry, "upstream", None), "gate", None)
        if gate is not None:
            yield GaugeMetricFamily("flm_backend_in_use", "Requests at the backend.",
                                    value=gate.in_use)
            yield GaugeMetricFamily("flm_backend_queue_depth", "Requests waiting for the "
                                    "backend.", value=gate.waiting)
        if self._logbuffer is not None:
            yield CounterMetricFamily("flm_log_rows_dropped", "Log rows dropped because the "
                                      "buffer was full.", value=self._logbuffer.dropped)
            yield GaugeMetricFamily("flm_log_rows_buffered", "Log rows waiting to be written.",
                                    value=len(self._logbuffer.rows))
        process = self._this_process()
        with process.oneshot():
            rss = process.memory_info().rss
            cpu = process.cpu_times()
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in "
                                "bytes.", value=rss)
        yield CounterMetricFamily("process_cpu_seconds", "User and system CPU time spent in "
                                  "seconds.", value=cpu.user + cpu.system)
