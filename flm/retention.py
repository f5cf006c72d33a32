"""Retention: a periodic task keeping request logs (and rollups) within their limits.

Every ``interval`` seconds it deletes rows older than ``log_retention_days`` and the
oldest past ``log_max_rows``, in batches of ``batch`` rows, each batch its own short
write transaction (see :func:`flm.store.logs.prune`).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from flm.store import logs

log = Logger()


class Retention(Service):
    name = "retention"

    def __init__(self, store: Any, clock: IReactorTime, *, retention_days: float,
                 max_rows: int, interval: float = 600.0, batch: int = 2000) -> None:
        self._store = store
        self._clock = clock
        self.retention_s = retention_days * 86400.0
        self.max_rows = max_rows
        self.interval = interval
        self.batch = batch
        self.deleted = 0
        self._running: Deferred[int] | None = None
        self._stopping = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def prune(self) -> Deferred[int]:
        """Prune now (or join the pruning under way); fires with the rows deleted."""
        if self._running is not None:
            return self._running
        older_than = self._clock.seconds() - self.retention_s
        d = Deferred.fromCoroutine(logs.prune(self._store, older_than, self.max_rows,
                                              self.batch, lambda: not self._stopping))

        def done(result: Any) -> Any:
            if self._running is d:
                self._running = None
            if isinstance(result, int):
                self.deleted += result
                if result:
                    log.info("retention: deleted {n} request log rows", n=result)
            return result
        self._running = d
        return d.addBoth(done)  # clears _running, also when the store answered at once

    def _tick(self) -> Deferred[Any]:
        # The loop body never fails: one exception would stop the LoopingCall for good.
        return self.prune().addErrback(lambda f: log.failure("pruning request logs failed", f))

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[Any]:
        """Stop the timer and wait for the batch under way; pruning stops after it."""
        super().stopService()
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        running = self._running
        if running is None:
            return succeed(None)
        result: Deferred[Any] = Deferred()
        running.addBoth(lambda r: result.callback(None) or r)
        return result
