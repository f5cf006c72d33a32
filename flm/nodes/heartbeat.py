"""This node's row in ``nodes``: written at start, renewed every heartbeat, marked
``gone`` on a clean stop; and the list ``GET /api/nodes`` shows.

A node that stops without saying so (killed, or cut off from the database) is listed as
``gone`` once three heartbeats have passed without a word from it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

from flm.observe.periodic import PeriodicService

MISSED = 3  # heartbeats a node may miss before it is listed as gone


class Heartbeat(PeriodicService):
    """Upserts the node's row at start and every ``interval`` seconds, and within
    ``check_s`` of a change in the APIs it serves (a look at memory, no query, until then)."""

    name = "node_heartbeat"
    run_at_start = True

    def __init__(self, store: Any, node: str, clock: IReactorTime, interval: float,
                 serving: Callable[[], list[str]], check_s: float = 0.25) -> None:
        super().__init__(clock, min(check_s, interval))
        self._store = store
        self.node = node
        self.heartbeat_s = interval
        self._serving = serving  # names of the APIs this node serves now
        self.started_at = clock.seconds()
        self._written: tuple[float, list[str]] | None = None  # when, and what

    def startService(self) -> None:
        self.started_at = self._clock.seconds()
        self._written = None
        super().startService()

    async def tick(self) -> None:
        now, serving = self._clock.seconds(), sorted(self._serving())
        if self._written is not None and self._written[1] == serving \
                and now - self._written[0] < self.heartbeat_s:
            return
        await self._store.see_node(self.node, self.started_at, now, self.heartbeat_s, serving)
        self._written = (now, serving)

    async def final(self) -> None:
        await self._store.node_gone(self.node, self._clock.seconds())


async def list_nodes(store: Any, now: float) -> dict[str, Any]:
    """The ``GET /api/nodes`` body: every node, ``up`` or ``gone``, by name."""
    items = []
    for name, started_at, last_seen, seen_s, heartbeat_s, status, apis in \
            await store.list_nodes():
        if status == "up" and now - seen_s > MISSED * heartbeat_s:
            status = "gone"
        items.append({"name": name, "status": status, "started_at": started_at,
                      "last_seen": last_seen, "apis": apis if status == "up" else []})
    return {"items": items}
