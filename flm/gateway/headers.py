"""Which headers cross the proxy, each way."""

from __future__ import annotations

from twisted.web.http_headers import Headers

# RFC 9110 7.6.1 hop-by-hop headers, plus what the proxy sets itself.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
_NOT_FORWARDED = HOP_BY_HOP | frozenset({
    # The API key, in any header a client may put it in (Azure's ``api-key`` too).
    b"authorization", b"api-key", b"x-api-key", b"host", b"content-length", b"content-type", b"expect",
    b"accept-encoding", b"x-request-id", b"cookie",
})
_NOT_RETURNED = HOP_BY_HOP | frozenset({b"content-length", b"server", b"date",
                                        b"x-request-id", b"set-cookie"})


def _dropped(headers: Headers, always: frozenset[bytes]) -> frozenset[bytes]:
    """``always``, plus the headers the ``Connection`` header lists (most have none: no
    new set then)."""
    listed = headers.getRawHeaders(b"connection")
    if not listed:
        return always
    return always.union(t.strip().lower() for value in listed for t in value.split(b","))


def upstream_headers(incoming: Headers, request_id: bytes) -> Headers:
    """The client's headers minus hop-by-hop ones, its key and anything FLM sets."""
    drop = _dropped(incoming, _NOT_FORWARDED)
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        if name.lower() not in drop:
            out.setRawHeaders(name, values)
    out.setRawHeaders(b"content-type", [b"application/json"])
    out.setRawHeaders(b"x-request-id", [request_id])
    return out


def copy_response_headers(upstream: Headers, request: object, length: object) -> None:
    """Copy the backend's response headers onto the client response; ``length`` is the
    body's length to announce (``response.length``: Twisted's client keeps Content-Length
    out of ``headers``), or None / ``UNKNOWN_LENGTH`` for a chunked answer."""
    drop = _dropped(upstream, _NOT_RETURNED)
    set_raw = request.responseHeaders.setRawHeaders  # type: ignore[attr-defined]
    for name, values in upstream.getAllRawHeaders():
        if name.lower() not in drop:
            set_raw(name, values)
    if isinstance(length, int):
        set_raw(b"content-length", [b"%d" % length])
