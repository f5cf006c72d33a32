"""``GET /api/events``: one Server-Sent Events stream of what changes, for the dashboard.

An in-process hub. Publishers (the log buffer's observers, the API and key mutations,
pull progress) call :meth:`EventHub.publish`; each open stream is a subscriber that
writes events straight to its connection while the transport takes them. When the
transport pushes back (a slow reader), events wait in a bounded queue; when that fills,
the subscriber is dropped (its stream ends with an ``overflow`` event, the client
reconnects and re-reads). So memory never grows with a reader that does not read.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.iweb import IRequest
from zope.interface import implementer

from flm.admin.errors import AdminError
from flm.records import utc_iso
from flm.store.db import LOG_COLUMNS

TYPES = ("log", "api", "key", "backend", "pull")


def parse_types(args: dict[bytes, list[bytes]]) -> frozenset[str]:
    """``?types=log,api``; absent or empty means every type; an unknown one is a 422."""
    for name in args:
        if name != b"types":
            raise AdminError(422, "unknown_field",
                             f"{name.decode('utf-8', 'replace')[:64]}: unknown parameter")
    raw = args.get(b"types", [b""])[0].decode("utf-8", "replace")
    if not raw:
        return frozenset(TYPES)
    wanted = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = sorted(wanted - set(TYPES))
    if unknown:
        raise AdminError(422, "invalid_field", f"types: unknown event type {unknown[0][:40]!r}; "
                                               f"use some of {', '.join(TYPES)}")
    return wanted or frozenset(TYPES)


def encode(kind: str, data: Any) -> bytes:
    return (f"event: {kind}\ndata: ".encode()
            + json.dumps(data, separators=(",", ":"), default=str).encode() + b"\n\n")


@implementer(IPushProducer)
class Subscriber:
    """One open stream. ``done`` fires when it ends; cancelling it (the client hung up,
    Klein cancels the route's Deferred) unsubscribes."""

    def __init__(self, hub: "EventHub", request: IRequest, types: frozenset[str],
                 max_queue: int) -> None:
        self._hub = hub
        self._request = request
        self.types = types
        self.max_queue = max_queue
        self.queue: deque[bytes] = deque()
        self.paused = False
        self.done: Deferred[None] = Deferred(lambda _: self.close())
        request.registerProducer(self, True)  # type: ignore[attr-defined]

    def send(self, chunk: bytes) -> None:
        if self.done.called:
            return
        if not self.paused:
            self._request.write(chunk)
            return
        if len(self.queue) >= self.max_queue:
            self._hub.dropped += 1
            self.queue.clear()
            self.paused = False
            self._request.write(encode("overflow", {"message": "this reader fell behind; "
                                                    "reconnect and re-read the current state"}))
            self.close()
            self.done.callback(None)  # Klein finishes the response
            return
        self.queue.append(chunk)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.queue and not self.paused and not self.done.called:
            self._request.write(self.queue.popleft())

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        self.queue.clear()
        self._hub.unsubscribe(self)
        if getattr(self._request, "channel", None) is not None:  # else the connection is gone
            self._request.unregisterProducer()  # type: ignore[attr-defined]


class EventHub:
    """Fan-out of events to the open streams, each bounded (see the module docstring)."""

    def __init__(self, clock: IReactorTime, *, max_queue: int = 1000,
                 heartbeat_s: float = 15.0) -> None:
        self.clock = clock
        self.max_queue = max_queue
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0
        self._ping = LoopingCall(self._keepalive)
        self._ping.clock = clock
        self._heartbeat_s = heartbeat_s

    def publish(self, kind: str, data: Any) -> None:
        """Send one event to every stream that asked for its type (nothing is kept)."""
        targets = [s for s in self.subscribers if kind in s.types]
        if not targets:
            return
        chunk = encode(kind, data)
        for s in targets:
            s.send(chunk)

    def stream(self, request: IRequest, types: frozenset[str]) -> Deferred[None]:
        """Start a stream on ``request``; the Deferred is the route's result."""
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b": connected\n\n")  # headers out now: the client knows it is live
        sub = Subscriber(self, request, types, self.max_queue)
        self.subscribers.add(sub)
        if not self._ping.running:
            self._ping.start(self._heartbeat_s, now=False)
        return sub.done

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers and self._ping.running:
            self._ping.stop()

    def _keepalive(self) -> None:
        for s in list(self.subscribers):
            s.send(b": ping\n\n")

    # -- publishers ------------------------------------------------------------------

    def log_row(self, row: Any) -> None:
        """A log buffer observer: each new row, as the logs API shows it (``id`` is null
        until the row is written)."""
        if not any("log" in s.types for s in self.subscribers):
            return
        item = dict(zip(LOG_COLUMNS, row))
        item["created_at"] = utc_iso(item["created_at"])
        item["id"] = None
        self.publish("log", item)

    def publisher(self, kind: str) -> Callable[[str, Any], None]:
        """``publish(action, obj)`` for one type: what the admin mutations are handed."""
        return lambda action, obj: self.publish(kind, {"action": action, **obj})
