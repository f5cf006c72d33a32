"""Per query name: how often, how long it ran, how long it waited for its connection;
kept on the reactor thread, collected by ``/metrics``. Both engines keep one."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import HistogramMetricFamily

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
