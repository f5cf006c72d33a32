"""Key usage to the store, in batches: one short transaction a second, whatever the load.

The request path counts usage in memory (:class:`flm.gateway.keys.KeyStates`); this loop
upserts the ``(key_id, day)`` rows that changed, and each key's ``last_used_at``. It runs
whether or not request logs are kept, so budgets hold with ``request_log = false``.
A failed write puts its counts back for the next tick (the transaction rolled back).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from flm.observe.periodic import PeriodicService
from flm.records import utc_iso

log = Logger()


class UsageFlush(PeriodicService):
    name = "key_usage"

    def __init__(self, store: Any, states: Any, clock: IReactorTime,
                 interval: float = 1.0) -> None:
        super().__init__(clock, interval)
        self._store = store
        self._states = states
        self.last_error: str | None = None

    async def tick(self) -> None:
        pending, last_used = self._states.drain()
        if not pending and not last_used:
            return
        try:
            await self._store.add_key_usage(pending, {k: utc_iso(t)
                                                      for k, t in last_used.items()})
        except CancelledError:
            self._states.restore(pending, last_used)
            raise
        except Exception as e:
            self._states.restore(pending, last_used)
            if self.last_error is None:
                log.error("writing key usage failed, will retry: {e}", e=e)
            self.last_error = str(e) or type(e).__name__
            return
        self.last_error = None

    async def final(self) -> None:
        await self.tick()
