"""Retention: a periodic task keeping request logs (and rollups) within their limits.

Every ``interval`` seconds it deletes rows older than ``log_retention_days`` and the
oldest past ``log_max_rows``, in batches of ``batch`` rows, each batch its own short
write transaction (see :func:`flm.store.logs.prune`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from flm.observe.periodic import PeriodicService
from flm.store import logs

log = Logger()


#: How long a written log batch's id is kept: a retry of it within this time is skipped.
BATCH_IDS_KEPT_S = 86400.0
#: Keys' daily usage is kept as long as the logs, and never less than two months: the
#: current month's budgets and the month before stay whole.
USAGE_KEPT_S = 62 * 86400.0


class Retention(PeriodicService):
    run_at_start = True
    name = "retention"

    def __init__(self, store: Any, clock: IReactorTime, *, retention_days: float,
                 max_rows: int, interval: float = 600.0, batch: int = 2000) -> None:
        super().__init__(clock, interval)
        self._store = store
        self.retention_s = retention_days * 86400.0
        self.max_rows = max_rows
        self.batch = batch
        self.deleted = 0
        self._running: Deferred[int] | None = None
        self._stopping = False

    def prune(self) -> Deferred[int]:
        """Prune now (or join the pruning under way); fires with the rows deleted."""
        if self._running is not None:
            return self._running
        now = self._clock.seconds()
        d = Deferred.fromCoroutine(logs.prune(
            self._store, now - self.retention_s, self.max_rows, self.batch,
            lambda: not self._stopping, batch_ids_before=now - BATCH_IDS_KEPT_S,
            usage_before_day=int((now - max(self.retention_s, USAGE_KEPT_S)) // 86400)))

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

    def tick(self) -> Deferred[int]:
        return self.prune()

    def startService(self) -> None:
        self._stopping = False
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Pruning stops after the batch under way, which stop waits for."""
        self._stopping = True
        return super().stopService()
