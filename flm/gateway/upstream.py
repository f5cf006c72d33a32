"""What every API's resource shares (:class:`Upstream`), and the failover vocabulary:
which answers another backend may retry, and what keeps a user on one backend."""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.web.iweb import IAgent

from flm.backends.health import BackendHealth
from flm.gateway.admission import BackendGate, QueuedBytes
from flm.gateway.fleet import Fleet, Member

DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024

@attrs.define
class Upstream:
    """What every API's resource shares: the backend, its gate, and where rows go."""

    agent: IAgent
    base_url: bytes
    paths: frozenset[bytes]
    gate: BackendGate
    clock: IReactorTime
    record: Callable[[tuple[Any, ...]], None]
    #: Request bytes waiting in every API's queue together (``max_queued_bytes``).
    queued: QueuedBytes = attrs.field(factory=lambda: QueuedBytes(DEFAULT_MAX_QUEUED_BYTES))
    #: The backend adapter, for the discovery calls (tags, show) answered on API ports.
    backend: Any = None
    #: Every backend by name; without one given, the one above as ``default``.
    fleet: Fleet | None = None
    #: Failover: at most this many more backends after the first (``max_retries``).
    max_retries: int = 2
    #: This node's name, the last field of every log row.
    node: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.fleet is None:
            self.fleet = Fleet(self.clock)
            self.fleet.add(Member("default", getattr(self.backend, "kind", "ollama"),
                                  self.base_url, self.paths, self.gate,
                                  BackendHealth(self.clock), adapter=self.backend,
                                  max_concurrent=self.gate.limit))

            self._own_fleet = True

    _own_fleet: bool = False

    def members(self, config: Any) -> list[Member]:
        """The backends ``config`` may use. A fleet made of the one backend above follows
        what is set on this object later (tests change it in place)."""
        assert self.fleet is not None
        if self._own_fleet:
            member = self.fleet.members["default"]
            member.adapter, member.paths = self.backend, self.paths
            member.kind = getattr(self.backend, "kind", member.kind)
        return self.fleet.eligible(config)


#: Statuses that say "not this backend, not now": another one may serve the request.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class Retry(Exception):
    """This attempt failed before the client had a byte; ``code`` is what to answer if no
    other backend may try."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Discard(Protocol):
    """Reads a response body nobody will see, so its connection goes back to the pool."""

    def dataReceived(self, data: bytes) -> None:
        pass



def affinity_key(request: Any, user: str | None) -> str | None:
    """What keeps a user on one backend: ``X-Session-Id``, else the body's OpenAI ``user``
    (as :func:`flm.gateway.payload.rewrite` found it)."""
    session = request.requestHeaders.getRawHeaders(b"x-session-id")
    if session:
        return "s:" + session[0].decode("latin-1")[:200]
    return "u:" + user[:200] if user else None


def reason(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return reasons[0].getErrorMessage()[:200]
    return (str(e) or type(e).__name__)[:200]

