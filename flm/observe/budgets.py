"""Token budgets that hold across nodes: each request of a key with a budget is stored on
its own, in one atomic upsert, just after its response (never on the request path).

The request path counts in memory and queues the charge (``KeyStates.charges``); this
service writes the queue in order and sets the key's counts from the totals the store
returns, every node's requests included. Every ``interval`` it also reads the totals of
the budgeted keys this node serves, so a key another node spent is refused here too.
Keys without a budget keep the batched counting of :class:`flm.observe.usage.UsageFlush`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from flm.observe.periodic import PeriodicService
from flm.records import utc_iso

log = Logger()
DAY = 86400


def budgeted_keys(runtimes: dict[int, Any]) -> list[int]:
    """Ids of the keys with a budget among the running APIs (registry runtimes)."""
    return [k.id for rt in runtimes.values() for k in rt.keyring.keys
            if k.daily_token_budget is not None or k.monthly_token_budget is not None]


async def settle_from_store(store: Any, states: Any, key_ids: list[int], day: int,
                            month: tuple[int, int]) -> None:
    """Set the keys' counts to every node's stored usage plus this node's not stored yet
    (a key with no stored usage: this node's alone)."""
    if not key_ids:
        return
    totals = await store.key_tokens(key_ids, day, month)
    for key_id in key_ids:
        today, this_month, requests = totals.get(key_id, (0, 0, 0))
        states.settle(key_id, day, today, this_month, requests)


class BudgetCharges(PeriodicService):
    name = "budget_charges"

    def __init__(self, store: Any, states: Any, clock: IReactorTime,
                 month_of: Callable[[int], tuple[int, int]],
                 budgeted: Callable[[], Iterable[int]] = lambda: (),
                 interval: float = 1.0) -> None:
        super().__init__(clock, interval)
        self._store = store
        self._states = states
        self._month_of = month_of  # epoch day -> (first day, first day of the next month)
        self._budgeted = budgeted  # ids of the budgeted keys this node serves
        self._writing: Deferred[None] | None = None
        self.last_error: str | None = None
        states.on_charge = self.kick

    def kick(self) -> None:
        """A charge was queued: write it on the next reactor turn."""
        if self._writing is None and self.running:
            self._writing = Deferred()
            self._clock.callLater(0, self._start_writing)

    def _start_writing(self) -> None:
        waiter, self._writing = self._writing, None
        d = self.write()
        if waiter is not None:
            d.chainDeferred(waiter)

    def write(self) -> Deferred[None]:
        """Store the queued charges in order (joining a write under way)."""
        if self._writing is not None:
            return self._writing
        d = self._writing = Deferred.fromCoroutine(self._write())

        def done(result: Any) -> Any:
            if self._writing is d:
                self._writing = None
            return result
        return d.addBoth(done)

    async def _write(self) -> None:
        charges = self._states.charges
        while charges:
            key_id, day, tokens, at = charges[0]
            try:
                totals = await self._store.charge_key(key_id, day, tokens,
                                                      self._month_of(day), utc_iso(at))
            except Exception as e:
                if self.last_error is None:
                    log.error("storing a budgeted key's usage failed, will retry: {e}", e=e)
                self.last_error = str(e) or type(e).__name__
                return  # left queued: the next tick retries
            self.last_error = None
            charges.popleft()
            if totals is not None:
                self._states.settle(key_id, day, *totals)

    async def refresh(self) -> None:
        """Other nodes' spending of the budgeted keys served here."""
        day = int(self._clock.seconds() // DAY)
        await settle_from_store(self._store, self._states, sorted(set(self._budgeted())), day,
                                self._month_of(day))

    async def tick(self) -> None:
        await self.write()
        await self.refresh()

    async def final(self) -> None:
        await self.write()
