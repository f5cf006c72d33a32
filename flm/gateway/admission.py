"""Who gets to the backend, and when: per-API FIFO gates, a shared priority gate, rate limits.

Order on the request path: the cheap refusals first (rate limit, queue full, queued bytes),
then the body is parsed and rewritten, then the API's gate (bounded FIFO) -> the backend's
gate (priority with aging). ``queue_timeout_s`` bounds the two waits together.
"""

from __future__ import annotations

from collections import deque
from itertools import count
from typing import Any, Sequence

import attrs
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime

# The cheap refusals before admission live beside it (re-exported: one place to import).
from flm.gateway.limits import FailedKeyLimiter, QueuedBytes, Refused, TokenBucket

__all__ = ["ApiGate", "BackendGate", "FailedKeyLimiter", "QueueTimeout", "QueuedBytes",
           "Refused", "Ticket", "TokenBucket", "acquire_any", "admit", "readmit"]


class _Waking:
    """Wakes waiters in a loop that cannot recurse.

    A waiter's callbacks run inside ``release``; when they release in turn (a request that
    fails at once), a plain semaphore recurses once per waiter and thousands of waiters
    finishing together end in ``RecursionError`` (Twisted #9304, ``DeferredSemaphore``).
    Here a release made while waking only returns the token: the outer loop goes on.
    """

    tokens: int
    _waking = False
    #: Set by ``close``: every acquire is refused with it (the service is stopping).
    closed: Refused | None = None

    def close(self) -> None:
        """Refuse every waiter now and every request from now on: FLM is stopping, and a
        request that has not reached the backend yet must not be sent there."""
        self.closed = Refused("shutting_down", 5, "The gateway is shutting down; retry "
                              "in a moment (or on another instance).")
        for d in self._take_all():
            d.errback(self.closed)

    def _refuse_if_closed(self) -> None:
        if self.closed is not None:
            raise self.closed

    def _wake(self) -> None:
        if self._waking:
            return
        self._waking = True
        try:
            while self.tokens > 0 and self._has_waiters():
                self.tokens -= 1
                self._fire(self._pop())
        finally:
            self._waking = False

    _waiting: Any  # the waiters, in the order the subclass keeps them
    limit: int

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def in_use(self) -> int:
        return self.limit - self.tokens

    def release(self) -> None:
        self.tokens += 1
        self._wake()

    def _has_waiters(self) -> bool:
        return bool(self._waiting)

    def _pop(self) -> Any:
        raise NotImplementedError

    def _fire(self, popped: Any) -> None:
        popped.callback(None)

    def _take_all(self) -> list[Deferred[None]]:
        raise NotImplementedError


class ApiGate(_Waking):
    """At most ``limit`` requests of one API admitted; up to ``max_queue`` more wait, FIFO.

    The limit can change while in use: lowering it below the number admitted admits
    nobody until enough have left.
    """

    def __init__(self, limit: int, max_queue: int) -> None:
        self.limit = limit
        self.tokens = limit
        self.max_queue = max_queue
        self._waiting: deque[Deferred[None]] = deque()

    def set_limits(self, limit: int, max_queue: int) -> None:
        self.max_queue = max_queue
        self.tokens += limit - self.limit
        self.limit = limit
        self._wake()


    def check(self) -> bool:
        """Whether a request arriving now would wait; ``Refused`` if the queue is full."""
        self._refuse_if_closed()
        if self.tokens > 0 and not self._waiting:  # waiters while waking: FIFO
            return False
        if len(self._waiting) >= self.max_queue:
            raise Refused("queue_full", 1, "Too many requests are waiting for this API; "
                          "retry later.")
        return True

    def acquire(self) -> Deferred[None]:
        """A Deferred that fires when admitted (cancel it to leave the queue)."""
        if not self.check():
            self.tokens -= 1
            return succeed(None)
        d: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        return d


    def _pop(self) -> Deferred[None]:
        return self._waiting.popleft()

    def _take_all(self) -> list[Deferred[None]]:
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting


#: Waiters of every backend gate in one order, so a request waiting on several gates is
#: compared fairly with the others (FIFO among equal priorities).
_SEQ = count()


class BackendGate(_Waking):
    """One backend's own concurrency, shared by all APIs.

    A waiting request's effective priority is its API's ``priority`` plus one for every
    ``aging_s`` seconds it has waited; the highest goes first, FIFO among equals, so a
    low-priority request is never starved for long. A request may wait on several gates
    at once (:func:`acquire_any`): the first to free a slot takes it, the others forget it.
    """

    def __init__(self, limit: int, clock: IReactorTime, aging_s: float = 10.0) -> None:
        self.limit = limit
        self.tokens = limit
        self._clock = clock
        self._aging_s = aging_s
        # (priority, arrived, seq, deferred, value it fires with, the entries of its group)
        self._waiting: list[tuple[Any, ...]] = []


    @property
    def busy(self) -> bool:
        """Whether a request arriving now would wait."""
        return self.tokens <= 0 or bool(self._waiting)

    def set_limit(self, limit: int) -> None:
        self.tokens += limit - self.limit
        self.limit = limit
        self._wake()

    def acquire(self, priority: int = 0) -> Deferred[None]:
        self._refuse_if_closed()
        if not self.busy:
            self.tokens -= 1
            return succeed(None)
        entry: tuple[Any, ...]

        def cancel(d: Deferred[None]) -> None:
            self._waiting.remove(entry)

        d: Deferred[None] = Deferred(cancel)
        entry = (priority, self._clock.seconds(), next(_SEQ), d, None, None)
        self._waiting.append(entry)
        return d


    def _pop(self) -> tuple[Any, ...]:
        now = self._clock.seconds()
        best = max(self._waiting, key=lambda e: (e[0] + (now - e[1]) / self._aging_s, -e[2]))
        self._waiting.remove(best)
        for gate, entry in best[5] or ():  # it waited elsewhere too: not any more
            if gate is not self:
                gate._waiting.remove(entry)
        return best

    def _fire(self, popped: tuple[Any, ...]) -> None:
        popped[3].callback(popped[4])

    def _take_all(self) -> list[Deferred[None]]:
        waiting = []
        for entry in list(self._waiting):
            if entry[3] not in waiting:
                waiting.append(entry[3])
            for gate, other in entry[5] or ():
                if gate is not self:
                    gate._waiting.remove(other)
        self._waiting.clear()
        return waiting


def acquire_any(gates: Sequence[BackendGate], priority: int = 0) -> Deferred[BackendGate]:
    """A slot on the first of ``gates`` (in the caller's order of preference) that has one
    free now, else on whichever frees one first; the Deferred fires with that gate.
    Cancelling it leaves every queue."""
    for gate in gates:
        gate._refuse_if_closed()
    for gate in gates:
        if not gate.busy:
            gate.tokens -= 1
            return succeed(gate)
    group: list[tuple[BackendGate, tuple[Any, ...]]] = []

    def cancel(d: Deferred[BackendGate]) -> None:
        for gate, entry in group:
            if entry in gate._waiting:
                gate._waiting.remove(entry)

    d: Deferred[BackendGate] = Deferred(cancel)
    seq = next(_SEQ)  # one place in the order, on every gate
    for gate in gates:
        entry = (priority, gate._clock.seconds(), seq, d, gate, group)
        gate._waiting.append(entry)
        group.append((gate, entry))
    return d


class QueueTimeout(Exception):
    """``queue_timeout_s`` passed while waiting; the message says for which gate."""


@attrs.define(eq=False)
class Ticket:
    """Both slots held: ``release`` gives them back, once, however often it is called.
    ``backend`` is the gate of the backend whose slot it holds (None between attempts)."""

    _api: ApiGate
    backend: BackendGate | None
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.backend is not None:
                self.backend.release()
            self._api.release()


async def _backend_slot(backend: BackendGate | Sequence[BackendGate], clock: IReactorTime,
                        priority: int, deadline: float) -> BackendGate:
    if isinstance(backend, BackendGate):
        d: Deferred[Any] = backend.acquire(priority).addCallback(lambda _: backend)
    else:
        d = acquire_any(backend, priority)
    if not d.called:
        d.addTimeout(max(0.0, deadline - clock.seconds()), clock)
    try:
        return await d
    except TimeoutError:
        raise QueueTimeout("Timed out waiting for the backend.") from None


async def admit(api: ApiGate, backend: BackendGate | Sequence[BackendGate],
                clock: IReactorTime, *, priority: int, deadline: float) -> Ticket:
    """The proxy's admission: the API's slot (FIFO), then a backend's (priority) -- the
    first of ``backend`` free, or the first to free one -- both by ``deadline``.

    Raises ``Refused`` (queue full) or ``QueueTimeout``; cancelling the wait leaves the
    queues. Whatever way it fails, it holds nothing afterwards; on success the caller
    holds a ``Ticket`` and must release it.
    """
    d = api.acquire()  # Refused: nothing taken
    try:
        if not d.called:
            await d.addTimeout(max(0.0, deadline - clock.seconds()), clock)
    except TimeoutError:
        raise QueueTimeout("Timed out waiting in the queue.") from None
    try:
        gate = await _backend_slot(backend, clock, priority, deadline)
    except BaseException:
        api.release()
        raise
    return Ticket(api, gate)


async def readmit(ticket: Ticket, backends: Sequence[BackendGate], clock: IReactorTime, *,
                  priority: int, deadline: float) -> Ticket:
    """Failover: give back the backend slot the ticket holds and take one of ``backends``
    by ``deadline``, keeping the API's slot. On any failure the ticket holds nothing."""
    if ticket.backend is not None:
        ticket.backend.release()
        ticket.backend = None
    try:
        ticket.backend = await _backend_slot(backends, clock, priority, deadline)
    except BaseException:
        ticket.release()
        raise
    return ticket
