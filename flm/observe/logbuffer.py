"""Request-log rows: buffered in memory, written in batches, never on the request path.

The proxy calls ``record`` (a list append). A ``LoopingCall`` flushes every interval and a
full batch flushes at once. When the database cannot keep up the buffer stops growing at
``max_rows`` and counts what it drops, rather than slow the proxy. A failed flush puts its
rows back in front and tries the same batch, under the same id, first next time: when the
database went away during the COMMIT, the batch may be written after all, and the store
skips a batch id it already has, so nothing is written twice.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from flm.observe.periodic import PeriodicService

log = Logger()

Row = Sequence[Any]  # ordered as flm.store.db.LOG_COLUMNS, the node that served it last


class LogBuffer(PeriodicService):
    name = "logbuffer"

    def __init__(self, store: Any, clock: IReactorTime, *, interval: float = 1.0,
                 batch_rows: int = 500, max_rows: int = 50_000, enabled: bool = True) -> None:
        super().__init__(clock, interval)
        self._store = store
        self.batch_rows = batch_rows
        self.max_rows = max_rows
        self.enabled = enabled  # False: metrics still see every row, none is stored
        self.rows: list[Row] = []
        self.dropped = 0
        self.written = 0
        self.last_error: str | None = None
        self.observers: list[Callable[[Row], None]] = []
        self._flushing: Deferred[None] | None = None
        self._retry: tuple[str, int] | None = None  # the failed batch: its id and size

    def record(self, row: Row) -> None:
        for observe in self.observers:
            observe(row)
        if not self.enabled:
            return
        if len(self.rows) >= self.max_rows:
            self.dropped += 1
            return
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows and self._flushing is None:
            self.flush()

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    def flush(self) -> Deferred[None]:
        """Write what is buffered; a flush under way is waited for, then another follows."""
        if self._flushing is not None:
            d: Deferred[None] = Deferred()
            self._flushing.addBoth(lambda _: self.flush().chainDeferred(d))
            return d
        if not self.rows:
            return succeed(None)
        d = Deferred.fromCoroutine(self._flush(len(self.rows)))
        if not d.called:  # a store that answered at once has already cleared the flag
            self._flushing = d
        return d

    async def _flush(self, asked: int) -> None:
        """Write the ``asked`` rows buffered when the flush began, then only full batches:
        chasing the rows that arrive meanwhile wrote batches of a few dozen, each a
        transaction and an fsync (measured at c=50: logging cost 17% of throughput, 3% with
        full batches). The rest waits for the next full batch or the next tick."""
        try:
            while self.rows and (asked > 0 or len(self.rows) >= self.batch_rows):
                batch_id, n = self._retry or (uuid.uuid4().hex, self.batch_rows)
                batch, self.rows = self.rows[:n], self.rows[n:]
                asked -= len(batch)
                last_used: dict[int, float] = {}
                for row in batch:
                    if row[1] > last_used.get(row[0], 0.0):
                        last_used[row[0]] = row[1]
                try:
                    await self._store.insert_logs(batch, last_used,
                                                  batch_id=batch_id)
                except CancelledError:
                    self.rows[:0] = batch
                    self._retry = (batch_id, len(batch))
                    raise
                except Exception as e:
                    self.rows[:0] = batch  # new rows only ever join at the end
                    self._retry = (batch_id, len(batch))
                    if self.last_error is None:
                        log.error("writing request logs failed, will retry: {e}", e=e)
                    self.last_error = str(e) or type(e).__name__
                    return
                self._retry = None
                self.written += len(batch)
                if self.last_error is not None:
                    log.info("writing request logs works again")
                    self.last_error = None
        finally:
            self._flushing = None

    def tick(self) -> Deferred[None]:
        return self.flush()

    async def final(self) -> None:
        """Write everything left, retrying a few times (the store closes after us)."""
        for _ in range(5):
            await self.flush()
            if not self.rows:
                return
            await deferLater(self._clock, 0.2, lambda: None)
        log.error("{n} request log rows could not be written at shutdown", n=len(self.rows))

