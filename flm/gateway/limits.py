"""The cheap refusals on the request path: rate limits, queued bytes, wrong-key throttling.

They run before a request is parsed or admitted (``flm.gateway.admission``)."""

from __future__ import annotations

import math
from typing import Hashable

from twisted.internet.interfaces import IReactorTime


class Refused(Exception):
    """Refused: ``code`` is ``queue_full``, ``rate_limited`` or ``shutting_down``."""

    def __init__(self, code: str, retry_after: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after
        self.message = message


class QueuedBytes:
    """The request bytes waiting in every queue together, bounded by ``limit``
    (``max_queued_bytes``), so a burst of large bodies cannot exhaust memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit

    def take(self, size: int) -> None:
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


class TokenBucket:
    """``rate_limit_rpm`` as a bucket of ``rpm`` tokens refilled at ``rpm / 60`` per second."""

    def __init__(self, rpm: int, clock: IReactorTime) -> None:
        self.rpm = rpm
        self._clock = clock
        self._tokens = float(rpm)
        self._at = clock.seconds()

    def take(self) -> None:
        """Take a token or raise ``Refused('rate_limited')`` with an honest Retry-After."""
        now = self._clock.seconds()
        rate = self.rpm / 60.0
        self._tokens = min(float(self.rpm), self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0 - 1e-9:  # float error must not refuse who waited Retry-After
            self._tokens = max(0.0, self._tokens - 1.0)
            return
        wait = math.ceil((1.0 - self._tokens) / rate - 1e-9)
        raise Refused("rate_limited", max(1, wait),
                      f"Rate limit of {self.rpm} requests per minute reached; "
                      f"retry in {max(1, wait)} s.")


class FailedKeyLimiter:
    """Slows a client that keeps sending wrong keys: after ``limit`` wrong keys from one
    source (an API and an address) within ``window_s``, its wrong keys get 429 instead
    of 401 until the window ends. The proxy consults it for wrong keys only, so a right
    key always works, from any address."""

    def __init__(self, clock: IReactorTime, limit: int = 20, window_s: float = 60.0,
                 max_addresses: int = 10_000) -> None:
        self._clock = clock
        self.limit = limit
        self.window_s = window_s
        self._max = max_addresses
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def blocked(self, address: Hashable) -> int:
        """Seconds until ``address`` may try again, or 0."""
        entry = self._seen.get(address)
        if entry is None:
            return 0
        start, failures = entry
        left = start + self.window_s - self._clock.seconds()
        if left <= 0:
            del self._seen[address]
            return 0
        return math.ceil(left) if failures >= self.limit else 0

    def failed(self, address: Hashable) -> None:
        now = self._clock.seconds()
        start, failures = self._seen.pop(address, (now, 0))
        if now - start >= self.window_s:
            start, failures = now, 0
        if len(self._seen) >= self._max:
            # Forget the oldest address (dicts keep insertion order).
            del self._seen[next(iter(self._seen))]
        self._seen[address] = (start, failures + 1)
