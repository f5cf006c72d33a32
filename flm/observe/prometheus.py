"""Prometheus gauges read at scrape time: queues, in flight, dropped rows, RSS."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


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
        reasons = CounterMetricFamily("flm_refused_requests", "Requests refused since the API "
                                      "started, by reason: invalid_api_key, key_expired, "
                                      "rate_limited, token_rate_limited, budget_exceeded, "
                                      "queue_full.", labels=["api", "reason"])
        for rt in runtimes:
            a = str(rt.id)
            reasons.add_metric([a, "invalid_api_key"], rt.refused_keys)
            for reason, n in sorted(getattr(rt, "refusals", {}).items()):
                reasons.add_metric([a, reason], n)
            info.add_metric([a, rt.config.name, rt.config.model], 1)
            in_flight.add_metric([a], rt.in_flight)
            queued.add_metric([a], rt.gate.waiting)
            refused.add_metric([a], rt.refused_keys)
            throttled.add_metric([a], getattr(rt, "throttled_keys", 0))
        yield from (info, in_flight, queued, refused, throttled, reasons)
        gate = getattr(getattr(self._registry, "upstream", None), "gate", None)
        if gate is not None:
            yield GaugeMetricFamily("flm_backend_in_use", "Requests at the backend.",
                                    value=gate.in_use)
            yield GaugeMetricFamily("flm_backend_queue_depth", "Requests waiting for the "
                                    "backend.", value=gate.waiting)
        yield from _backends(getattr(getattr(self._registry, "upstream", None), "fleet", None))
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


def _backends(fleet: Any) -> Iterator[Any]:
    """Per backend: up (1) or not, its state, in flight, waiting, requests, failures and
    the requests it sent elsewhere (retries)."""
    members = list(getattr(fleet, "members", {}).values())
    if not members:
        return
    up = GaugeMetricFamily("flm_backend_up", "1 when the backend is up.", labels=["backend"])
    state = GaugeMetricFamily("flm_backend_state", "The backend's state (1 for the current "
                              "one).", labels=["backend", "state"])
    in_flight = GaugeMetricFamily("flm_backend_in_flight", "Requests at the backend.",
                                  labels=["backend"])
    waiting = GaugeMetricFamily("flm_backend_waiting", "Requests waiting for the backend.",
                                labels=["backend"])
    requests = CounterMetricFamily("flm_backend_requests", "Attempts sent to the backend.",
                                   labels=["backend"])
    failures = CounterMetricFamily("flm_backend_failures", "Attempts that failed: connect "
                                   "errors, timeouts, 5xx.", labels=["backend"])
    retries = CounterMetricFamily("flm_backend_retries", "Requests that failed here and "
                                  "went to another backend.", labels=["backend"])
    for m in members:
        up.add_metric([m.name], 1 if m.state == "up" else 0)
        for name in ("up", "down", "probing"):
            state.add_metric([m.name, name], 1 if m.state == name else 0)
        in_flight.add_metric([m.name], m.gate.in_use)
        waiting.add_metric([m.name], m.gate.waiting)
        requests.add_metric([m.name], m.requests)
        failures.add_metric([m.name], m.failures)
        retries.add_metric([m.name], m.retries)
    yield from (up, state, in_flight, waiting, requests, failures, retries)
