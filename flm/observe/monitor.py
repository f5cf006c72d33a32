"""Self-monitoring: RSS and CPU of this process, sampled by a ``LoopingCall``.

Warns once when RSS passes ``memory_limit`` and says so again when it is back under
(``/health`` turns ``degraded`` on its own reading of RSS). ``last`` is the newest sample.
"""

from __future__ import annotations

from typing import Any

import attrs
import psutil
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from flm.observe.periodic import PeriodicService

log = Logger()


@attrs.frozen
class Sample:
    at: float
    rss_bytes: int
    cpu_percent: float
    threads: int


class Monitor(PeriodicService):
    name = "monitor"
    run_at_start = True

    def __init__(self, clock: IReactorTime, *, interval: float = 60.0,
                 memory_limit: int = 2 * 1024**3, process: Any = None) -> None:
        super().__init__(clock, interval)
        self.memory_limit = memory_limit
        self._given = process
        self._process: Any = process
        self.started_at = clock.seconds()
        self.last: Sample | None = None
        self.over_limit = False

    @property
    def process(self) -> Any:
        """This process (psutil). Built at start, never in ``__init__``: ``twistd`` builds
        the service before it forks, and a handle made then watches the parent, which exits."""
        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first call only starts the measurement
        return self._process

    def sample(self) -> Sample:
        """Read RSS and CPU % (since the previous sample) now; warn on crossing the limit."""
        process = self.process
        with process.oneshot():
            rss = process.memory_info().rss
            cpu = process.cpu_percent(None)
            threads = process.num_threads()
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
        return int(self.process.memory_info().rss)

    @property
    def uptime_s(self) -> float:
        return self._clock.seconds() - self.started_at

    def tick(self) -> None:
        self.sample()

    def startService(self) -> None:
        self.started_at = self._clock.seconds()
        if self._given is None:
            self._process = None  # built anew in this (possibly forked) process
        self.process
        super().startService()
