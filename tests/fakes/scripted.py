"""A model server whose every answer the test writes, reached through a real ``Agent``.

``ScriptedBackend`` is a twisted.web ``Resource`` that records each request as a ``Call``
and answers nothing until the test says so (``call.respond(...)``, then ``body.send`` /
``body.end``). FLM's production ``Agent`` (with the persistent pool it uses in
production) reaches it over in-memory connections (``twisted.test.iosim``): the client
side is Twisted's own HTTP/1.1 client, so the producer, cancellation and error behaviour
the proxy meets is the real one. Only the model server is fake.

Every observation (``calls``, ``call.cancelled``, ``body.transport.paused``...) first
moves whatever bytes are in flight, so a test reads like the exchange were synchronous.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from flm.http.client import make_pool


class PausableTransport(iosim.FakeTransport):
    """iosim's transport, with the back-pressure of a socket: while the receiving side is
    paused (``pauseProducing``), bytes for it wait here instead of being delivered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = False
        self.held: list[bytes] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def bufferReceived(self, buf: Any) -> None:
        if self.paused:
            self.held.append(buf)
        else:
            super().bufferReceived(buf)

    def deliver_held(self) -> bool:
        if self.paused or not self.held:
            return False
        held, self.held = self.held, []
        for buf in held:
            super().bufferReceived(buf)
        return True


class UpstreamTransport:
    """What a test sees of one backend connection: is it paused by FLM, was it stopped."""

    def __init__(self, call: "Call") -> None:
        self._call = call

    @property
    def paused(self) -> bool:
        self._call.backend.flush()
        client = self._call.backend.client_side(self._call.request)
        return client is not None and client.paused

    @property
    def stopped(self) -> bool:
        return self._call.cancelled


class UpstreamBody:
    """The body of one answer, written by the test piece by piece."""

    def __init__(self, call: "Call") -> None:
        self.call = call
        self.transport = UpstreamTransport(call)

    def send(self, chunk: bytes) -> None:
        if not self.call.gone:
            self.call.request.write(chunk)
        self.call.backend.flush()

    def end(self, reason: Any = None) -> None:
        """Finish the answer; with a ``reason`` (any failure), cut the connection instead."""
        if not self.call.gone:
            if reason is None:
                self.call.request.finish()
            else:
                self.call.request.channel.transport.abortConnection()
        self.call.backend.flush()


class Call:
    """One request the model server received."""

    def __init__(self, backend: "ScriptedBackend", request: Request) -> None:
        self.backend = backend
        self.request = request
        self.method: bytes = request.method
        host = request.getHeader(b"host") or b""
        self.uri: bytes = b"http://" + host + request.uri
        self.headers: Headers = request.requestHeaders
        self.body: bytes = request.content.read() if request.content is not None else b""
        self.responded = False
        self.gone = False
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _: Any) -> None:
        self.gone = True

    @property
    def cancelled(self) -> bool:
        """FLM dropped this request (its connection to the model server closed)."""
        self.backend.flush()
        return self.gone

    @property
    def answered(self) -> bool:
        return self.responded or self.gone

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def respond(self, code: int = 200, body: bytes | list[bytes] = b"", *,
                headers: dict[bytes, bytes] | None = None, end: bool = True) -> UpstreamBody:
        """Answer ``code`` with ``body`` (one piece, or several written one by one);
        ``end=False`` leaves the (chunked) body open for ``send``/``end``."""
        self.responded = True
        answer = UpstreamBody(self)
        if self.gone:
            return answer
        chunks = [body] if isinstance(body, bytes) else body
        all_headers = {b"content-type": b"application/json", **(headers or {})}
        if isinstance(body, bytes) and end:
            all_headers.setdefault(b"content-length", b"%d" % len(body))
        self.request.setResponseCode(code)
        for name, value in all_headers.items():
            self.request.setHeader(name, value)
        for piece in chunks:
            self.request.write(piece)
        if not chunks:
            self.request.write(b"")  # the headers leave now
        if end:
            answer.end()
        self.backend.flush()
        return answer


class _Recorder(Resource):
    isLeaf = True

    def __init__(self, backend: "ScriptedBackend") -> None:
        super().__init__()
        self.backend = backend

    def render(self, request: Request) -> int:
        self.backend._calls.append(Call(self.backend, request))
        return NOT_DONE_YET


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, backend: "ScriptedBackend") -> None:
        self.backend = backend

    def endpointForURI(self, uri: Any) -> "_Endpoint":
        return _Endpoint(self.backend, uri)


class _Endpoint:
    def __init__(self, backend: "ScriptedBackend", uri: Any) -> None:
        self.backend = backend
        self.uri = uri

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.backend.refuse:
            return fail(ConnectionRefusedError("connection refused"))
        return succeed(self.backend.connect(factory, self.uri))


class ScriptedBackend:
    """The model server of a unit test, and the real ``Agent`` FLM reaches it with."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.refuse = False
        self._calls: list[Call] = []
        self._pumps: list[iosim.IOPump] = []
        self.site = Site(_Recorder(self), reactor=clock)
        self.site.timeOut = None
        self.pool = make_pool(clock, max_per_host=10, idle_timeout=30.0)
        self.agent: IAgent = Agent.usingEndpointFactory(clock, _Endpoints(self), pool=self.pool)

    @property
    def calls(self) -> list[Call]:
        """Every request received so far (after moving the bytes in flight)."""
        self.flush()
        return self._calls

    def connect(self, factory: Any, uri: Any) -> Any:
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self._pumps))
        server_address = IPv4Address("TCP", "127.0.0.1", uri.port)
        server = self.site.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        pump = iosim.connect(
            server, PausableTransport(server, isServer=True, hostAddress=server_address,
                                      peerAddress=client_address),
            client, PausableTransport(client, isServer=False, hostAddress=client_address,
                                      peerAddress=server_address),
            greet=False, clock=self.clock)
        self._pumps.append(pump)
        return client

    def client_side(self, request: Request) -> PausableTransport | None:
        """FLM's end of the connection ``request`` came on."""
        for pump in self._pumps:
            if pump.serverIO is request.channel.transport or pump.server is request.channel:
                return pump.clientIO  # type: ignore[no-any-return]
        return None

    def flush(self) -> None:
        """Move bytes both ways until nothing moves (new connections included)."""
        for _ in range(1000):
            moved = False
            for pump in list(self._pumps):
                moved = pump.clientIO.deliver_held() or moved
                moved = pump.flush(advanceClock=False) or moved
            self._pumps = [p for p in self._pumps
                           if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return
        raise AssertionError("the in-memory connections never went quiet")
