"""Performance metrics: per-minute rollups into the store, and Prometheus collectors.

:class:`Metrics` observes every log row as the proxy records it (a ``LogBuffer``
observer): it keeps per-API, per-minute aggregates in memory (by arrival time) and feeds
Prometheus counters and histograms. A ``LoopingCall`` writes settled minutes to
``performance_metrics`` every ``interval`` seconds; ``stopService`` writes the rest.
Everything Prometheus sees lives in a private ``CollectorRegistry``, never the global one.
"""

from __future__ import annotations

from typing import Any, Sequence

from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from flm.observe.minutes import (
    ROW_API,
    ROW_AT,
    ROW_COMPLETION,
    ROW_PROMPT,
    ROW_RESPONSE,
    ROW_STATUS,
    ROW_TTFB,
    Minute,
    error_kind,
    status_class,
)
from flm.observe.periodic import PeriodicService
from flm.observe.prometheus import RuntimeCollector
from flm.observe.series import ApiSeries, RequestSeries, count
from flm.store import logs

log = Logger()

class Metrics(PeriodicService):
    """Per-minute rollups and the Prometheus registry; ``observe`` is the row observer."""

    name = "metrics"

    def __init__(self, store: Any, clock: IReactorTime, *, registry: Any = None,
                 logbuffer: Any = None, interval: float = 60.0, settle_s: float = 60.0,
                 node: str | None = None) -> None:
        super().__init__(clock, interval)
        self._store = store
        self.settle_s = settle_s
        self.node = node  # with several nodes, a crash rebuild takes only this node's rows
        self.minutes: dict[tuple[int, int], Minute] = {}
        self._rolling: Deferred[None] | None = None
        self.prometheus = CollectorRegistry(auto_describe=True)
        r = self.prometheus
        self.series = RequestSeries()
        r.register(self.series)
        # Deleted APIs (ids are never reused): rows of requests that end after the delete
        # must not bring their series, or a rollup, back.
        self._deleted: set[int] = set()
        r.register(RuntimeCollector(registry, logbuffer))
        if getattr(store, "timings", None) is not None:
            r.register(store.timings)  # flm_store_query_seconds, ..._wait_seconds by query

    # observing rows (on the request path: cheap, and never raises)

    def observe(self, row: Sequence[Any]) -> None:
        try:
            api_id = row[ROW_API]
            if api_id in self._deleted:
                return
            key = (api_id, int(row[ROW_AT] // 60) * 60)
            minute = self.minutes.get(key)
            if minute is None:
                minute = self.minutes[key] = Minute()
            minute.add(row)
            self._count(api_id, row)
        except Exception:
            log.failure("metrics could not count a log row")

    def _count(self, api_id: int, row: Sequence[Any]) -> None:
        s = self.series.apis.get(api_id)
        if s is None:
            s = self.series.apis[api_id] = ApiSeries()
        count(s.by_class, status_class(row[ROW_STATUS]))
        kind = error_kind(row)
        if kind is not None:
            count(s.errors, kind)
        if row[ROW_RESPONSE] is not None:
            s.latency.observe(row[ROW_RESPONSE] / 1000.0)
        if row[ROW_TTFB] is not None:
            s.ttfb.observe(row[ROW_TTFB] / 1000.0)
        if row[ROW_PROMPT]:
            s.prompt[0] += row[ROW_PROMPT]
        if row[ROW_COMPLETION]:
            s.completion[0] += row[ROW_COMPLETION]

    def forget(self, api_id: int) -> None:
        """The API was deleted: drop its series and its minutes not yet rolled up."""
        self._deleted.add(api_id)
        for key in [k for k in self.minutes if k[0] == api_id]:
            del self.minutes[key]
        self.series.apis.pop(api_id, None)

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
        async for rows in logs.unrolled_rows(self._store, upto, node=self.node):
            for row in rows:
                key = (row[ROW_API], int(row[ROW_AT] // 60) * 60)
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
