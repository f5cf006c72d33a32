"""Several backends: which ones may serve a request, which one should, and the retry budget.

The gateway's view of each backend (:class:`Member`): its gate (its own concurrency,
shared by every API), its health, its model list. :meth:`Fleet.order` gives the gates to
wait on, best first: least loaded (``in_flight / max_concurrent``), then ``weight``, then
two random choices; with ``affinity`` the backend a user was sent to before, unless it is
far busier than the others.
"""

from __future__ import annotations

import random as _random
from collections import OrderedDict
from typing import Any, Callable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from flm.backends.health import BackendHealth
from flm.gateway.admission import BackendGate

#: A pinned backend is given up when it is at least this full and busier than this many
#: times the mean load of the candidates.
AFFINITY_MIN_LOAD = 0.5
AFFINITY_FACTOR = 1.5
AFFINITY_KEYS = 10_000


@attrs.define(eq=False)
class Member:
    """One backend as the request path sees it."""

    name: str
    kind: str
    base_url: bytes
    paths: frozenset[bytes]
    gate: BackendGate
    health: BackendHealth
    adapter: Any = None  # flm.backends.Backend, for discovery calls
    models: Any = None  # flm.backends.catalog.ModelCache
    prober: Any = None  # flm.backends.health.Prober
    max_concurrent: int = 1
    weight: int = 1
    enabled: bool = True
    requests: int = 0
    failures: int = 0
    retries: int = 0

    @property
    def load(self) -> float:
        return self.gate.in_use / max(1, self.max_concurrent)

    @property
    def state(self) -> str:
        return self.health.state

    def lists(self, model: str) -> bool | None:
        return None if self.models is None else self.models.lists_now(model)

    def apply_limit(self) -> None:
        """``max_concurrent`` while up or probing; one trial request at a time while down."""
        self.gate.set_limit(1 if self.health.state == "down" else self.max_concurrent)


class RetryBudget:
    """Retries may add about ``ratio`` of the requests (plus ``per_s`` a second for quiet
    times), so failover cannot multiply the load of an outage."""

    def __init__(self, clock: IReactorTime, ratio: float = 0.2, per_s: float = 5.0,
                 cap: float = 50.0) -> None:
        self._clock = clock
        self.ratio = ratio
        self.per_s = per_s
        self.cap = cap
        self.balance = cap
        self._at = clock.seconds()
        self.refused = 0

    def deposit(self) -> None:
        self.balance = min(self.cap, self.balance + self.ratio)

    def withdraw(self) -> bool:
        now = self._clock.seconds()
        self.balance = min(self.cap, self.balance + (now - self._at) * self.per_s)
        self._at = now
        if self.balance >= 1.0:
            self.balance -= 1.0
            return True
        self.refused += 1
        return False


class Fleet(Service):
    """Every backend by name; starts and stops their probes."""

    name = "fleet"

    def __init__(self, clock: IReactorTime, *,
                 on_change: Callable[[Member], None] = lambda m: None,
                 random: _random.Random | None = None) -> None:
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.on_change = on_change
        self.budget = RetryBudget(clock)
        self._random = random or _random.Random()
        self._pins: OrderedDict[str, str] = OrderedDict()

    # membership

    def add(self, member: Member) -> None:
        old = self.members.get(member.name)
        if old is not None and old.prober is not None:
            old.prober.stop()
        self.members[member.name] = member
        member.health.on_change = lambda h, m=member: self._moved(m)
        member.apply_limit()
        if self.running and member.prober is not None and member.enabled:
            member.prober.start()

    def remove(self, name: str) -> None:
        member = self.members.pop(name, None)
        if member is not None and member.prober is not None:
            member.prober.stop()

    def _moved(self, member: Member) -> None:
        member.apply_limit()
        self.on_change(member)

    def startService(self) -> None:
        super().startService()
        for m in self.members.values():
            if m.prober is not None and m.enabled:
                m.prober.start()

    def stopService(self) -> Any:
        for m in self.members.values():
            if m.prober is not None:
                m.prober.stop()
        return super().stopService()

    def by_gate(self, gate: BackendGate) -> Member:
        for m in self.members.values():
            if m.gate is gate:
                return m
        raise LookupError("no backend with that gate")

    # routing

    def eligible(self, config: Any, path: bytes | None = None) -> list[Member]:
        """The enabled backends the API may use for ``path``: those it names, else those
        that list its model (every one when none does, or none knows yet)."""
        names = getattr(config, "backends", None)
        if names:
            found = [self.members[n] for n in names if n in self.members]
            members = [m for m in found if m.enabled]
        else:
            members = [m for m in self.members.values() if m.enabled]
            listing = [m for m in members if m.lists(config.model) is not False]
            members = listing or members
        if path is not None:
            members = [m for m in members if path in m.paths]
        return members

    @staticmethod
    def candidates(members: Sequence[Member]) -> list[Member]:
        """Those up; else those not known to be down; else all of them anyway (a probe
        can be wrong, and a down backend takes one trial request at a time)."""
        return ([m for m in members if m.state == "up"]
                or [m for m in members if m.state != "down"] or list(members))

    def order(self, members: Sequence[Member], pin: str | None = None) -> list[Member]:
        """The members to wait on, best first (see the module docstring)."""
        if len(members) <= 1:
            return list(members)
        if pin is not None:
            pinned = self._pinned(pin, members)
            if pinned is not None:
                return [pinned]
        free = [m for m in members if not m.gate.busy] or members
        best = free[0]
        if len(free) > 1:
            # Two different ones at random (``random.sample`` is several times slower), the
            # first drawn winning a tie.
            draw = self._random.random
            i = int(draw() * len(free))
            j = int(draw() * (len(free) - 1))
            best, other = free[i], free[j + (j >= i)]
            if (other.load, -other.weight) < (best.load, -best.weight):
                best = other
        return [best] + [m for m in members if m is not best]

    def _pinned(self, key: str, members: Sequence[Member]) -> Member | None:
        name = self._pins.get(key)
        for m in members:
            if m.name == name:
                mean = sum(x.load for x in members) / len(members)
                if m.load >= AFFINITY_MIN_LOAD and m.load > AFFINITY_FACTOR * mean:
                    return None  # far busier than the others: given up
                self._pins.move_to_end(key)
                return m
        return None

    def pin(self, key: str, member: Member) -> None:
        self._pins[key] = member.name
        self._pins.move_to_end(key)
        while len(self._pins) > AFFINITY_KEYS:
            self._pins.popitem(last=False)
