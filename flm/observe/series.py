"""The per-API request series of ``/metrics``, counted as plain numbers per request and
turned into Prometheus families only when scraped.

``prometheus_client``'s ``Counter.inc`` and ``Histogram.observe`` take a lock and walk
the buckets in Python: six calls a request cost ~12 us of the reactor's time, more than
all of FLM's routing. The exposition is the same as theirs (``_total``, ``_created``,
cumulative ``le`` buckets, ``_count``, ``_sum``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]


class Histogram:
    """Counts per bucket (not cumulative), their sum, and when the series began."""

    __slots__ = ("counts", "sum", "created")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: upper bound included
        self.sum += seconds


class ApiSeries:
    """One API's counters; a labelled counter is ``[value, created]``."""

    __slots__ = ("by_class", "errors", "latency", "ttfb", "prompt", "completion")

    def __init__(self) -> None:
        now = time.time()
        self.by_class: dict[str, list[float]] = {}
        self.errors: dict[str, list[float]] = {}
        self.latency = Histogram()
        self.ttfb = Histogram()
        self.prompt = [0, now]
        self.completion = [0, now]


def count(labelled: dict[str, list[float]], label: str) -> None:
    cell = labelled.get(label)
    if cell is None:
        cell = labelled[label] = [0, time.time()]
    cell[0] += 1


class RequestSeries:
    """A collector of every API's :class:`ApiSeries` (``apis``, by API id)."""

    def __init__(self) -> None:
        self.apis: dict[int, ApiSeries] = {}

    def describe(self) -> list[Any]:
        return []  # the series vary with the APIs; collected at scrape time

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("flm_requests", "Requests that passed the key check, "
                                       "by API id and status class.",
                                       labels=["api", "status_class"])
        errors = CounterMetricFamily("flm_request_errors", "Requests counted in error_rate: "
                                     "answered with a status >= 500 (kind=status) or cut by a "
                                     "backend failure after the status was sent (kind=cut).",
                                     labels=["api", "kind"])
        prompt = CounterMetricFamily("flm_prompt_tokens", "Prompt tokens the backend "
                                     "reported.", labels=["api"])
        completion = CounterMetricFamily("flm_completion_tokens", "Completion tokens the "
                                         "backend reported.", labels=["api"])
        latency = Metric("flm_request_duration_seconds", "Arrival to last byte sent to the "
                         "client.", "histogram")
        ttfb = Metric("flm_time_to_first_byte_seconds", "Admitted to first byte from the "
                      "backend.", "histogram")
        for api_id, s in list(self.apis.items()):
            a = str(api_id)
            for cls, (n, created) in sorted(s.by_class.items()):
                requests.add_metric([a, cls], n, created=created)
            for kind, (n, created) in sorted(s.errors.items()):
                errors.add_metric([a, kind], n, created=created)
            prompt.add_metric([a], s.prompt[0], created=s.prompt[1])
            completion.add_metric([a], s.completion[0], created=s.completion[1])
            _histogram(latency, a, s.latency)
            _histogram(ttfb, a, s.ttfb)
        yield from (requests, latency, ttfb, errors, prompt, completion)


def _histogram(family: Metric, api: str, h: Histogram) -> None:
    name = family.name
    total = 0
    for le, n in zip(_LE, h.counts):
        total += n
        family.add_sample(name + "_bucket", {"api": api, "le": le}, total)
    family.add_sample(name + "_count", {"api": api}, total)
    family.add_sample(name + "_sum", {"api": api}, h.sum)
    family.add_sample(name + "_created", {"api": api}, h.created)
