"""The fake model server in its fast mode, for the benchmarks: OpenAI-compatible only.

A minimal HTTP/1.1 keep-alive protocol on a raw Twisted ``Protocol`` (no
``twisted.web``), so that it costs far less per request than anything measured
through it (the full fake, ``tests.fakes.backend``, is twisted.web and scriptable).
``python -m tests.fakes.fast --port 0`` (or ``python -m bench.backend``) prints
``listening on <port>``.

- ``POST /v1/chat/completions`` (and ``/v1/completions``): a fixed small answer
  with ``usage``; with ``"stream": true`` five content chunks, a finish chunk,
  a usage chunk when ``stream_options.include_usage`` is set, then ``[DONE]``,
  as SSE over chunked transfer encoding.  A body field ``bench_chunk_delay_ms``
  spaces the stream's events (used to tell time-to-first-byte from total time).
- ``GET /v1/models`` and ``GET /api/tags`` list the one model ``bench-model``.
- ``GET /bench/stats`` answers the number of completions served.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet import protocol

MODEL = "bench-model"
CREATED = 1700000000

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench backend."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    },
    separators=(",", ":"),
).encode()


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


_WORDS = ["Hello", " from", " the", " bench", " backend."]
_STREAM = (
    [_chunk({"role": "assistant", "content": _WORDS[0]})]
    + [_chunk({"content": w}) for w in _WORDS[1:]]
    + [_chunk({}, "stop")]
)
_USAGE_EVENT = _event(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
)
_DONE = b"data: [DONE]\n\n"
_MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}]},
    separators=(",", ":"),
).encode()
_TAGS = json.dumps(
    {
        "models": [
            {
                "name": MODEL,
                "model": MODEL,
                "modified_at": "2024-01-01T00:00:00Z",
                "size": 1,
                "digest": "0" * 64,
                "details": {"family": "bench", "parameter_size": "1B", "quantization_level": "Q4_0"},
            }
        ]
    },
    separators=(",", ":"),
).encode()


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class BenchHTTP(protocol.Protocol):
    """One keep-alive connection; requests are answered one after the other."""

    def __init__(self, factory: BenchFactory) -> None:
        self.factory = factory
        self.buf = b""
        self.busy = False  # a delayed stream is being written
        self.closing = False

    def connectionMade(self) -> None:
        # Like real model servers: no Nagle delay between the small SSE writes.
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        while not self.busy and not self.closing:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            method, path, version = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            pos = end + 4
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body, pos = self._dechunk(pos)
                if body is None:
                    return
            else:
                length = int(headers.get("content-length", "0") or 0)
                if len(self.buf) < pos + length:
                    return
                body = self.buf[pos : pos + length]
                pos += length
            self.buf = self.buf[pos:]
            keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            self.closing = not keep
            self._answer(method, path.split("?", 1)[0], body)

    def _dechunk(self, pos: int) -> tuple[bytes | None, int]:
        parts = []
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None, pos
            size = int(self.buf[pos:eol].split(b";", 1)[0], 16)
            start = eol + 2
            if size == 0:
                trailer = self.buf.find(b"\r\n", start)
                if trailer < 0:
                    return None, pos
                return b"".join(parts), trailer + 2
            if len(self.buf) < start + size + 2:
                return None, pos
            parts.append(self.buf[start : start + size])
            pos = start + size + 2

    def _send(self, status: bytes, ctype: bytes, body: bytes) -> None:
        conn = b"close" if self.closing else b"keep-alive"
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
            % (status, ctype, len(body), conn, body)
        )
        if self.closing:
            self.transport.loseConnection()

    def _answer(self, method: str, path: str, body: bytes) -> None:
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            self.factory.completions += 1
            try:
                req = json.loads(body) if body else {}
            except ValueError:
                self._send(b"400 Bad Request", b"application/json", b'{"error":{"message":"bad json"}}')
                return
            if req.get("stream"):
                usage = bool((req.get("stream_options") or {}).get("include_usage"))
                self._stream(usage, float(req.get("bench_chunk_delay_ms") or 0) / 1000.0)
            else:
                self._send(b"200 OK", b"application/json", _COMPLETION)
        elif method == "GET" and path == "/v1/models":
            self._send(b"200 OK", b"application/json", _MODELS)
        elif method == "GET" and path == "/api/tags":
            self._send(b"200 OK", b"application/json", _TAGS)
        elif method == "GET" and path == "/bench/stats":
            self._send(b"200 OK", b"application/json", b'{"completions":%d}' % self.factory.completions)
        elif method == "GET" and path in ("/", "/health"):
            self._send(b"200 OK", b"text/plain", b"ok")
        else:
            self._send(b"404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')

    def _stream(self, usage: bool, delay: float) -> None:
        events = list(_STREAM)
        if usage:
            events.append(_USAGE_EVENT)
        events.append(_DONE)
        conn = b"close" if self.closing else b"keep-alive"
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: %s\r\n\r\n" % conn
        )
        if delay <= 0:
            self.transport.write(head + b"".join(_frame(e) for e in events) + b"0\r\n\r\n")
            self._done()
            return
        self.busy = True
        self.transport.write(head + _frame(events[0]))
        self._later(events[1:], delay)

    def _later(self, events: list[bytes], delay: float) -> None:
        def step() -> None:
            if self.transport is None or not self.connected:
                return
            self.transport.write(_frame(events[0]))
            if len(events) > 1:
                self._later(events[1:], delay)
            else:
                self.transport.write(b"0\r\n\r\n")
                self.busy = False
                self._done()
                self._process()

        self.factory.reactor.callLater(delay, step)

    def _done(self) -> None:
        if self.closing:
            self.transport.loseConnection()


class BenchFactory(protocol.Factory):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.completions = 0

    def buildProtocol(self, addr: Any) -> BenchHTTP:
        return BenchHTTP(self)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    port = reactor.listenTCP(args.port, BenchFactory(reactor), backlog=1024, interface=args.host)  # type: ignore[attr-defined]
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
