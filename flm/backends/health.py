"""One backend's health: a small state machine fed by probes and by real requests, and the
probe loop that feeds it.

``probing`` (not known yet, or llama.cpp still loading its model) -> ``up`` after a good
probe; ``down`` -> ``up`` after 2 good probes in a row; ``down`` after 3 failed probes or 5 failed requests in a row (connect
errors, timeouts, 5xx). A request that succeeds on a backend proves it is up too.
"""

from __future__ import annotations

import enum
import random as _random
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

DOWN_AFTER_PROBES = 3
DOWN_AFTER_REQUESTS = 5
UP_AFTER_PROBES = 2


class ProbeResult(enum.Enum):
    UP = "up"
    DOWN = "down"
    LOADING = "loading"  # llama.cpp's 503 "loading model": alive, not ready


class BackendHealth:
    """``state``, ``last_error``, ``checked_at``; ``on_change(self)`` when the state moves."""

    def __init__(self, clock: IReactorTime,
                 on_change: Callable[["BackendHealth"], None] = lambda h: None) -> None:
        self._clock = clock
        self.on_change = on_change
        self.state = "probing"
        self.last_error: str | None = None
        self.checked_at: float | None = None
        self.failed_probes = 0
        self.good_probes = 0
        self.failed_requests = 0

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if state == "up":
                self.last_error = None  # an up backend shows no old error as if current
            self.on_change(self)

    def probed(self, result: ProbeResult, error: str | None = None) -> None:
        self.checked_at = self._clock.seconds()
        if result is ProbeResult.UP:
            self.failed_probes = 0
            self.good_probes += 1
            if self.state != "down" or self.good_probes >= UP_AFTER_PROBES:
                self.failed_requests = 0
                self._set("up")
            return
        self.good_probes = 0
        self.last_error = error
        if result is ProbeResult.LOADING:
            self.failed_probes = 0
            self._set("probing")
            return
        self.failed_probes += 1
        if self.failed_probes >= DOWN_AFTER_PROBES:
            self._set("down")

    def request_ok(self) -> None:
        self.failed_requests = 0
        self._set("up")

    def request_failed(self, error: str) -> None:
        self.last_error = error
        self.failed_requests += 1
        if self.failed_requests >= DOWN_AFTER_REQUESTS:
            self.good_probes = 0
            self._set("down")


ProbeFn = Callable[[], "Deferred[tuple[ProbeResult, str | None]]"]


class Prober:
    """Calls ``probe`` every ``interval_s`` (+-20% jitter, so backends are not probed in
    step), each within ``timeout_s``, and tells ``health``. One probe at a time."""

    def __init__(self, health: BackendHealth, probe: ProbeFn, clock: Any, *,
                 interval_s: float = 5.0, timeout_s: float = 2.0,
                 random: Callable[[], float] = _random.random) -> None:
        self.health = health
        self._probe = probe
        self._clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._random = random
        self._call: IDelayedCall | None = None
        self._running: Deferred[Any] | None = None
        self._stopped = True

    def next_delay(self) -> float:
        return self.interval_s * (0.8 + 0.4 * self._random())

    def start(self) -> None:
        self._stopped = False
        self._tick()

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._running is not None:
            self._running.cancel()

    def _tick(self) -> None:
        self._call = None
        if self._stopped:
            return
        d = self._probe().addTimeout(self.timeout_s, self._clock)
        self._running = d
        d.addCallbacks(lambda r: self.health.probed(*r), self._failed)
        d.addErrback(lambda f: log.failure("backend probe failed", f))
        d.addBoth(self._again)

    def _failed(self, failure: Any) -> None:
        if failure.check(CancelledError) and self._stopped:
            return
        reason = failure.getErrorMessage() or failure.type.__name__
        if failure.check(CancelledError):  # addTimeout cancels
            reason = f"no answer to the probe within {self.timeout_s:g} s"
        self.health.probed(ProbeResult.DOWN, reason[:200])

    def _again(self, _: Any) -> None:
        self._running = None
        if not self._stopped:
            self._call = self._clock.callLater(self.next_delay(), self._tick)


async def probe_backend(http: Any, kind: str, base_url: str) -> tuple[ProbeResult, str | None]:
    """A free endpoint, never an inference: Ollama's ``/api/version``; for an OpenAI server
    ``/health`` (llama.cpp, vLLM), then ``/v1/models`` when it has none."""
    paths = ["/api/version"] if kind == "ollama" else ["/health", "/v1/models"]
    result: tuple[ProbeResult, str | None] = (ProbeResult.DOWN, "no probe")
    for path in paths:
        response = await http.get(base_url + path)
        body = await response.content()
        if 200 <= response.code < 300:
            return ProbeResult.UP, None
        if response.code == 503 and b"loading" in body.lower():
            return ProbeResult.LOADING, "loading model"
        result = ProbeResult.DOWN, f"{path} answered HTTP {response.code}"
        if response.code != 404:
            break
    return result
