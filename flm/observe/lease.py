"""Work that runs on one node at a time (retention, WAL checkpoints): a lease row.

A node runs the task only while it holds the lease ``name``: one atomic UPDATE takes it
when it is ours or expired (a first INSERT makes the row), and each run renews it. A node
that dies keeps the lease only until ``expires_at``; then another takes it over. A lease
row works on SQLite and PostgreSQL alike (PostgreSQL's advisory locks would be freed by
a lost connection, but also held by a node stuck with its connection open).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()


class Lease:
    """``held()`` takes or renews the lease for ``ttl_s`` seconds; False: skip the run."""

    def __init__(self, store: Any, name: str, holder: str, clock: IReactorTime,
                 ttl_s: float) -> None:
        self._store = store
        self.name = name
        self.holder = holder
        self._clock = clock
        self.ttl_s = ttl_s
        self.holding = False

    async def held(self) -> bool:
        holding = await self._store.take_lease(self.name, self.holder, self._clock.seconds(),
                                               self.ttl_s)
        if holding != self.holding:
            log.info("{task}: {what} on this node ({holder})", task=self.name,
                     what="runs" if holding else "runs on another node", holder=self.holder)
        self.holding = holding
        return holding

    async def release(self) -> None:
        """A clean stop hands the task on at once (no wait for expiry)."""
        if self.holding:
            self.holding = False
            await self._store.drop_lease(self.name, self.holder)
