"""A service that does one thing every few seconds, and its last bit of work on stop."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class PeriodicService(Service):
    """Calls ``tick`` every ``interval`` seconds while running.

    A failing tick is logged and the loop goes on: one exception would stop a bare
    ``LoopingCall`` for good while it still looks running. ``stopService`` waits for the
    tick under way, then runs ``final`` once (the last flush, rollup...).
    """

    run_at_start = False
    #: A :class:`flm.observe.lease.Lease`: with several nodes, run only where it is held.
    lease: Any = None

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self.interval = interval
        self._loop = LoopingCall(self._safe_tick)
        self._loop.clock = clock
        self._looping: Deferred[Any] | None = None

    def tick(self) -> Any:
        raise NotImplementedError

    async def final(self) -> None:
        """Work to do once on stop, after the last tick."""

    def _safe_tick(self) -> Deferred[Any]:
        work = self.tick if self.lease is None else self._leased_tick
        return maybeDeferred(work).addErrback(
            lambda f: log.failure("{name}: periodic work failed", f, name=self.name))

    def _leased_tick(self) -> Deferred[Any]:
        async def run() -> Any:
            if await self.lease.held():
                return await maybeDeferred(self.tick)
            return None
        return Deferred.fromCoroutine(run())

    def startService(self) -> None:
        super().startService()
        self._looping = self._loop.start(self.interval, now=self.run_at_start)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._looping is not None:
            await self._looping
            self._looping = None
        await self.final()
        if self.lease is not None:
            try:
                await self.lease.release()
            except Exception:
                log.failure("{name}: handing the lease on failed", name=self.name)
