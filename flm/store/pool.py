"""The SQLite engine: one writer connection, one read-only connection, every query named
and timed.

The writer is a single connection (``cp_min=cp_max=1``): SQLite has one writer anyway,
and with more connections read-then-write updates were lost. Writes take
``BEGIN IMMEDIATE``. Admin reads go to their own read-only connection (WAL lets a reader
and the writer work at once), so a slow page of logs never holds up a log flush.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client.core import HistogramMetricFamily
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

SYNCHRONOUS = "FULL"  # see docs/operations.md, "Durability"
BUSY_TIMEOUT_MS = 5000
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def configure_writer(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def configure_reader(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # each read interaction is one BEGIN ... COMMIT snapshot
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


class QueryStat:
    """One query name: how often, how long it ran, how long it waited for its connection."""

    __slots__ = ("count", "sum_run", "sum_wait", "max_wait", "run", "wait")

    def __init__(self) -> None:
        self.count = 0
        self.sum_run = self.sum_wait = self.max_wait = 0.0
        self.run = [0] * len(BUCKETS)
        self.wait = [0] * len(BUCKETS)

    def add(self, wait: float, run: float) -> None:
        self.count += 1
        self.sum_run += run
        self.sum_wait += wait
        self.max_wait = max(self.max_wait, wait)
        for counts, value in ((self.run, run), (self.wait, wait)):
            for i, edge in enumerate(BUCKETS):
                if value <= edge:
                    counts[i] += 1
                    break


class Timings:
    """Per query name, kept on the reactor thread; a Prometheus collector for ``/metrics``."""

    def __init__(self) -> None:
        self.queries: dict[str, QueryStat] = {}

    def observe(self, name: str, wait: float, run: float) -> None:
        stat = self.queries.get(name)
        if stat is None:
            stat = self.queries[name] = QueryStat()
        stat.add(wait, run)

    def describe(self) -> list[Any]:
        return []  # the names vary: collected at scrape time

    def collect(self) -> Iterator[Any]:
        run = HistogramMetricFamily("flm_store_query_seconds", "Store queries by name: "
                                    "from the start on their connection to the answer.",
                                    labels=["query"])
        wait = HistogramMetricFamily("flm_store_query_wait_seconds", "Store queries by name: "
                                     "time waiting for their connection.", labels=["query"])
        for name, stat in sorted(self.queries.items()):
            for family, counts, total in ((run, stat.run, stat.sum_run),
                                          (wait, stat.wait, stat.sum_wait)):
                cumulative, buckets = 0, []
                for edge, n in zip(BUCKETS, counts):
                    cumulative += n
                    buckets.append((str(edge), cumulative))
                buckets.append(("+Inf", stat.count))
                family.add_metric([name], buckets, total)
        yield run
        yield wait


class Engine:
    """The two adbapi pools; ``read`` and ``write`` run one named, timed interaction."""

    def __init__(self, path: Path, reactor: Any = None) -> None:
        self.path = path
        self.timings = Timings()
        self._reactor = reactor
        self._writer: adbapi.ConnectionPool | None = None
        self._reader: adbapi.ConnectionPool | None = None

    def start(self) -> None:
        kw: dict[str, Any] = {"cp_min": 1, "cp_max": 1, "check_same_thread": False}
        if self._reactor is not None:
            kw["cp_reactor"] = self._reactor
        self._writer = adbapi.ConnectionPool("sqlite3", str(self.path),
                                             cp_openfun=configure_writer, **kw)
        self._reader = adbapi.ConnectionPool("sqlite3", self.path.absolute().as_uri()
                                             + "?mode=ro", uri=True,
                                             cp_openfun=configure_reader, **kw)

    def pools(self) -> list[adbapi.ConnectionPool]:
        return [p for p in (self._writer, self._reader) if p is not None]

    def close(self) -> None:
        for pool in self.pools():
            pool.close()
        self._writer = self._reader = None

    def read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert self._reader is not None, "store is not open"
        return self._run(self._reader, "BEGIN", name, fn, args)

    def write(self, name: str, fn: Callable[..., Any], *args: Any,
              begin: str | None = "BEGIN IMMEDIATE") -> Deferred[Any]:
        """On the writer; ``begin=None`` for what must run outside a transaction."""
        assert self._writer is not None, "store is not open"
        return self._run(self._writer, begin, name, fn, args)

    def _run(self, pool: adbapi.ConnectionPool, begin: str | None, name: str,
             fn: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        queued = time.perf_counter()
        started: list[float] = []

        def txn(cursor: Any, *a: Any) -> Any:
            started.append(time.perf_counter())
            if begin is not None:
                cursor.execute(begin)
            return fn(cursor, *a)

        def timed(result: Any) -> Any:
            end = time.perf_counter()
            begun = started[0] if started else end
            self.timings.observe(name, begun - queued, end - begun)
            return result
        return pool.runInteraction(txn, *args).addBoth(timed)
