"""Self-monitoring: RSS and CPU of this process, sampled by a ``LoopingCall``.

Warns once when RSS passes ``memory_limit`` and says so again when it is back under
(``/health`` turns ``degraded`` on its own reading of RSS). ``last`` is the newest sample.
"""

from __future__ import annotations

from typing import Any

import attrs
import psutil
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


@attrs.frozen
class Sample:
    at: float
    rss_bytes: int
    cpu_percent: float
    threads: int


class Monitor(Service):
    name = "monitor"

    def __init__(self, clock: IReactorTime, *, interval: float = 60.0,
                 memory_limit: int = 2 * 1024**3, process: Any = None) -> None:
        self._clock = clock
        self.interval = interval
        self.memory_limit = memory_limit
        self._process = process if process is not None else psutil.Process()
        self.started_at = clock.seconds()
        self.last: Sample | None = None
        self.over_limit = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._process.cpu_percent(None)  # the first call only starts the measurement

    def sample(self) -> Sample:
        """Read RSS and CPU % (since the previous sample) now; warn on crossing the limit."""
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            cpu = self._process.cpu_percent(None)
            threads = self._process.num_threads()
        self.last = Sample(self._clock.seconds(), rss, cpu, threads)
        over = rss > self.memory_limit
        if over and not self.over_limit:
            log.warn("memory: RSS {rss} bytes is over memory_limit {limit} bytes; /health "
                     "says degraded", rss=rss, limit=self.memory_limit)
        elif self.over_limit and not over:
            log.info("memory: RSS {rss} bytes is back under memory_limit {limit} bytes",
                     rss=rss, limit=self.memory_limit)
        self.over_limit = over
        return self.last

    def rss_now(self) -> int:
        return int(self._process.memory_info().rss)

    @property
    def uptime_s(self) -> float:
        return self._clock.seconds() - self.started_at

    def _tick(self) -> None:
        # The loop body never fails: one exception would stop the LoopingCall for good.
        try:
            self.sample()
        except Exception:
            log.failure("reading process memory and CPU failed")

    def startService(self) -> None:
        super().startService()
        self.started_at = self._clock.seconds()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
