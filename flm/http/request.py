"""Requests that are refused before their body is read.

Twisted by default accepts any body, spools it to disk and answers ``Expect: 100-continue``
by itself. Here ``gotLength`` (called once the headers are in, before the 100 Continue)
checks the declared length and, for API ports, the key; a refusal is written at once with
``Connection: close``, the rest of the body is discarded, and the connection is aborted if
the client keeps uploading (a lingering close, so the client reads the answer, not a reset).
"""

from __future__ import annotations

import os
import re
from http import HTTPStatus
from itertools import count
from typing import Any

from twisted.web.server import Request

LINGER_S = 2.0
# Standard reason phrases: Twisted's table lacks 429, 431 and 422 ("Unknown Status").
PHRASES: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# A client's request id is taken when it is up to 128 characters that are safe in a
# header, a log line and a URL (no spaces, quotes, separators or control bytes).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:/+=@-]{1,128}")


# A fresh id is a random per-process prefix and a counter: unique, and far cheaper than
# a uuid4 (a getrandom call) per request.
_ID_PREFIX = os.urandom(8).hex().encode()
_ids = count(1)


def request_id(given: bytes | None) -> bytes:
    """The client's ``X-Request-Id`` when it is sane, else a fresh one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return b"%s%016x" % (_ID_PREFIX, next(_ids))


class _Body:
    """The request body in memory, bounded by the caller (never spooled to disk)."""

    __slots__ = ("_chunks", "_size", "_pos")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._pos = 0

    def write(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)

    def tell(self) -> int:
        return self._size

    def seek(self, pos: int, whence: int = 0) -> None:
        self._pos = pos

    def getvalue(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def read(self, n: int = -1) -> bytes:
        data = self.getvalue()[self._pos:] if n < 0 else self.getvalue()[self._pos:self._pos + n]
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._chunks = []


class _Sink(_Body):
    """Counts and discards what a refused client still sends."""

    def write(self, data: bytes) -> None:
        self._size += len(data)


class BoundedRequest(Request):
    """A request whose body is held in memory up to ``site.max_body`` bytes."""

    refused = False
    #: The client went away (or the response was cut): nothing more is written.
    gone = False
    #: ``(method, target, version)``, set by ``GuardedChannel`` from the request line.
    request_line: tuple[bytes, bytes, bytes] = (b"GET", b"/", b"HTTP/1.1")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: float = self.channel.site.clock.seconds()

    def connectionLost(self, reason: Any) -> None:
        self.gone = True
        super().connectionLost(reason)

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """Every status with its standard reason phrase (a backend's own one included)."""
        super().setResponseCode(code, PHRASES.get(code, message))

    def gotLength(self, length: int | None) -> None:
        self.content = _Body()
        self.request_id = request_id(self.requestHeaders.getRawHeaders(b"x-request-id", [None])[0])
        self.setHeader(b"x-request-id", self.request_id)
        if length is not None and length > self.channel.site.max_body:
            self.refuse(*self.too_large())
        else:
            self.check_headers()

    def check_headers(self) -> None:
        """Subclasses refuse here, with the headers in and no body read yet."""

    def too_large(self) -> tuple[int, bytes]:
        return 413, self.channel.site.error_body(
            413, "request_too_large", f"Request body is over {self.channel.site.max_body} bytes.")

    def handleContentChunk(self, data: bytes) -> None:
        if not self.refused and self.content.tell() + len(data) > self.channel.site.max_body:
            self.refuse(*self.too_large())
        self.content.write(data)

    def refuse(self, status: int, body: bytes, content_type: bytes = b"application/json",
               headers: dict[bytes, bytes] | None = None) -> None:
        """Answer now, close after; whatever the client still sends is thrown away."""
        self.refused = True
        self.content = _Sink()
        # requestReceived has not run yet: the status line needs the request line.
        self.method, self.uri, self.clientproto = self.request_line
        self.requestHeaders.removeHeader(b"expect")
        self.channel.persistent = False
        self.setResponseCode(status)
        for name, value in (headers or {}).items():
            self.setHeader(name, value)
        self.setHeader(b"content-type", content_type)
        self.setHeader(b"content-length", b"%d" % len(body))
        self.setHeader(b"connection", b"close")
        self.write(body)
        transport = self.channel.transport
        self.channel.site.clock.callLater(LINGER_S, _abort, transport)

    def process(self) -> None:
        if self.refused:
            self.finish()
        else:
            super().process()


def _abort(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()
