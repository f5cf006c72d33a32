"""Limits at the edge of every listening port, before any request object exists.

Twisted's own guards answer a bare ``400`` (too many or too large headers), drop a header
line over 16 KiB silently, and reset the idle timeout on every byte, so a client trickling
one byte a minute holds a connection for days. This channel answers 431 / 414 / 408 in
the site's error shape and bounds the time the headers and the body may take.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

LINGER_S = 2.0


class GuardedChannel(HTTPChannel):
    maxHeaders = 100
    totalHeadersSize = 32 * 1024  # request line and all headers
    MAX_LENGTH = 16 * 1024  # one line

    _between = True
    _arriving = False  # from a request's first byte until its body is all in
    _deadline: IDelayedCall | None = None
    _what = "headers"  # what the deadline is for: "headers" or "body"
    # This request's head so far, counted here: Twisted's own counters are private.
    _head_bytes = 0
    _head_count = 0

    def dataReceived(self, data: bytes) -> None:
        if self._between and data:
            # The first byte of a request: its headers must all be in soon.
            self._between = False
            self._arriving = True
            self._what = "headers"
        super().dataReceived(data)
        if self._arriving and self._deadline is None:
            # Armed only for a request still incomplete after the bytes at hand: most
            # arrive whole, and arming, moving and cancelling a timer cost ~5 us a request.
            self._arm()

    def lineReceived(self, line: bytes) -> None:
        self._head_bytes += len(line)
        if self._head_bytes > self.totalHeadersSize:
            self._answer(431, "request_header_fields_too_large",
                         f"Request headers are over {self.totalHeadersSize} bytes.")
            return
        newest = self.requests[-1] if self.requests else None
        super().lineReceived(line)
        if self.requests and self.requests[-1] is not newest:
            # That was a request line: a request refused before ``requestReceived``
            # (in ``gotLength``) needs it for its status line.
            self.requests[-1].request_line = request_line(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._head_count >= self.maxHeaders:
            self._answer(431, "request_header_fields_too_large",
                         f"More than {self.maxHeaders} request headers.")
            return False
        ok = super().headerReceived(line)
        self._head_count += ok
        return ok

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self.requests:
            self._answer(414, "uri_too_long", f"Request line over {self.MAX_LENGTH} bytes.")
        else:
            self._answer(431, "request_header_fields_too_large",
                         f"A request header line is over {self.MAX_LENGTH} bytes.")

    def allHeadersReceived(self) -> None:
        self._what = "body"
        if self._deadline is not None:  # the headers' deadline becomes the body's
            self._deadline.reset(self.site.body_timeout_s)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._arriving = False
        self._disarm()
        self._head_bytes = self._head_count = 0
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._between = True
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        site = self.site
        seconds = site.header_timeout_s if self._what == "headers" else site.body_timeout_s
        self._deadline = self.callLater(seconds, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        self._arriving = False
        what = self._what
        request = self.requests[-1] if self.requests else None
        if request is not None and request.startedWriting:
            self.transport.abortConnection()
            return
        self._answer(408, "request_timeout", f"The request {what} took too long to arrive.")

    def _answer(self, status: int, code: str, message: str) -> None:
        """A raw response and a lingering close: no request object may exist yet."""
        self._arriving = False
        self._disarm()
        body = self.site.error_body(status, code, message)
        reason = {408: b"Request Timeout", 414: b"URI Too Long",
                  431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (status, reason, len(body), body))
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore[method-assign]
        # Half-close: closing with unread input would reset the connection, and the
        # client would see the reset instead of the answer.
        getattr(self.transport, "loseWriteConnection", self.transport.loseConnection)()
        self.callLater(LINGER_S, _abort, self.transport)


def request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """``(method, target, version)`` of a request line; a malformed one (which Twisted
    answers with a 400 itself) as a harmless placeholder."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return (b"GET", b"/", b"HTTP/1.1")
    return parts[0], parts[1], parts[2]


def _abort(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


class GuardedSite(Site):
    """A site of guarded channels that tracks its connections and caps their number.

    At the cap the listening port stops accepting (``listener.stopReading()``): further
    clients wait in the kernel's listen backlog, as nginx's do, instead of being closed;
    it accepts again once a connection ends. The accepts of one reactor turn can pass the
    cap by a few: they are served, never dropped.
    """

    protocol = GuardedChannel
    noisy = False

    def __init__(self, resource: Any, *, clock: Any, max_body: int, idle_timeout: float,
                 header_timeout: float = 10.0, body_timeout: float = 60.0,
                 max_connections: int = 4096) -> None:
        # A JSON gateway never decodes form bodies; parsing Content-Type for them cost
        # ~18% of a proxied request's CPU (STYLE.md).
        super().__init__(resource, timeout=idle_timeout, reactor=clock,
                         parsePOSTFormSubmission=False)
        self.clock = clock
        self.max_body = max_body
        self.header_timeout_s = header_timeout
        self.body_timeout_s = body_timeout
        self.max_connections = max_connections
        self.channels: set[GuardedChannel] = set()
        #: The listening port (a ``tcp.Port``), set by whoever listens with this site.
        self.listener: Any = None
        self.paused = False

    def error_body(self, status: int, code: str, message: str) -> bytes:
        raise NotImplementedError

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        if len(self.channels) >= self.max_connections and not self.paused:
            if self.listener is not None:
                self.listener.stopReading()
                self.paused = True
        lost = channel.connectionLost

        def connectionLost(reason: Any) -> None:
            self.channels.discard(channel)
            if self.paused and len(self.channels) < self.max_connections:
                self.paused = False
                if getattr(self.listener, "connected", False):  # not closed meanwhile
                    self.listener.startReading()
            lost(reason)
        channel.connectionLost = connectionLost
        return channel

    def log(self, request: Any) -> None:
        """No access log: API requests get rows in the request log, admin calls need none."""
