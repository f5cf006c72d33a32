"""Per-API, per-minute aggregates of log rows: counts, errors, p95s in bounded memory."""

from __future__ import annotations

import math
from typing import Any, Sequence

#: Positions in a log row (ordered as flm.store.db.LOG_COLUMNS).
ROW_API, ROW_AT, ROW_STATUS, ROW_TTFB, ROW_RESPONSE, ROW_PROMPT, ROW_COMPLETION, ROW_ERROR = 0, 1, 4, 6, 8, 12, 13, 15
#: Log-row errors of a response the backend cut after its status was sent.
BACKEND_CUTS = frozenset({"backend_disconnected", "backend_timeout"})


def error_kind(row: Sequence[Any]) -> str | None:
    """Why a row counts in ``error_rate``: ``status`` (>= 500), ``cut`` (the backend
    failed after the status was sent), or None."""
    if row[ROW_STATUS] >= 500:
        return "status"
    if row[ROW_ERROR] in BACKEND_CUTS:
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
        if row[ROW_STATUS] >= 500 or row[ROW_ERROR] in BACKEND_CUTS:
            self.errors += 1
        if row[ROW_RESPONSE] is not None:
            self.sum_ms += row[ROW_RESPONSE]
            self.response_ms.add(row[ROW_RESPONSE])
        if row[ROW_TTFB] is not None:
            self.ttfb_ms.add(row[ROW_TTFB])
        self.prompt += row[ROW_PROMPT] or 0
        self.completion += row[ROW_COMPLETION] or 0

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
