"""Raw HTTP request bytes, valid-ish and not, against an API port and the admin port.

Whatever arrives, in whatever pieces: no exception escapes the channel, nothing is logged
as a failure, no answer is a 5xx, and once every byte is in and the clock has passed every
deadline the connection is closed (answered or cut, never stuck), with no queue slot or
in-flight count left behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from flm.admin.apis import Apis
from flm.admin.app import AdminApp
from tests.test_admin_apis import FakeModels, InlineReactor, inline_store
from tests.test_edge_limits import ADMIN_TOKEN, CHAT, KEY, Harness, parse_responses

SETTINGS = settings(derandomize=True, deadline=None, max_examples=400,
                    suppress_health_check=list(HealthCheck))
AFTER_ALL_DEADLINES = 400.0  # header 10, body 30, idle 75 (+15 abort), linger 2, upstream 30

METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS",
                           b"CONNECT", b"TRACE", b"FOO", b"get", b"", b"P\x00ST"])
API_PATHS = [b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings", b"/v1/models",
             b"/api/chat", b"/api/generate", b"/api/embed", b"/api/pull", b"/api/tags", b"/",
             b"*", b"http://127.0.0.1/v1/models", b"/v1/../api/pull", b"/v1/models?x=%ff",
             b"/%00", b"//v1/models"]
ADMIN_PATHS = [b"/health", b"/metrics", b"/api/apis", b"/api/apis/1", b"/api/apis/chat",
               b"/api/apis/1/start", b"/api/apis/1/stop", b"/api/apis/1/rotate-key",
               b"/api/apis?limit=0", b"/api/apis?limit=abc&cursor=%ff", b"/api/apis/%ff",
               b"/api/system", b"/api/models", b"/api/logs", b"/", b"/nope"]
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/9",
                            b"http/1.1", b"", b"HTTP/1.1 extra"])
TOKEN_BYTES = st.binary(min_size=0, max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b)
JSON_BODIES = st.sampled_from([
    b'{"model":"x","messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"x","prompt":"hi","stream":true}',
    b'{"model":"x","messages":[],"stream":true,"stream_options":{"include_usage":false}}',
    b'{"name":"fz","model":"llama3.2","port":47999,"allow_unknown_model":true}',
    b'{"max_queue":-1}', b'{"name":null}', b"[]", b"null", b"{", b'{"a":NaN}', b"1e999999",
    b'"\\ud800"', b"[" * 5000, b'{"x":' + b"9" * 5000 + b"}", b"\xff\xfe", b"",
])
BODIES = st.one_of(JSON_BODIES, st.binary(max_size=300))


@st.composite
def headers(draw: Any, admin: bool) -> list[bytes]:
    out: list[bytes] = []
    host = draw(st.sampled_from([b"localhost", b"127.0.0.1:8420", b"evil.example", b"",
                                 b"[::1]", None]))
    if host is not None:
        out.append(b"Host: " + host)
    secret = (ADMIN_TOKEN if admin else KEY).encode()
    auth = draw(st.sampled_from([b"Bearer " + secret, b"Bearer " + secret, b"Bearer nope",
                                 b"Basic " + secret, b"bearer  " + secret + b" ", None]))
    if auth is not None:
        out.append(b"Authorization: " + auth)
    for _ in range(draw(st.integers(0, 4))):
        out.append(draw(st.sampled_from([
            b"Expect: 100-continue", b"Connection: close", b"Connection: keep-alive, X-A",
            b"Content-Type: application/json", b"X-Request-Id: abc", b"X-Request-Id: \x7f\x01",
            b"Accept-Encoding: gzip", b"Transfer-Encoding: gzip, chunked",
            b"Content-Length: -1", b"Content-Length: 99999999999999999999",
            b"Content-Length: 1, 2", b"Content-Length: abc", b" folded", b"NoColon",
            b": empty-name", b"X-Fake-Delay: 0", b"Cookie: a=b",
        ])))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.binary(min_size=1, max_size=10).filter(
            lambda b: not any(c in b for c in b"\r\n:")))
        out.append(name + b": " + draw(TOKEN_BYTES))
    return out


@st.composite
def chunked(draw: Any, body: bytes) -> bytes:
    style = draw(st.sampled_from(["valid", "valid", "bad_size", "no_crlf", "negative", "huge",
                                  "ext", "no_end", "trailer"]))
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)] or [b""]
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    if style == "bad_size":
        return b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    if style == "no_crlf":
        return b"%x\r\n%s0\r\n\r\n" % (len(body), body)
    if style == "negative":
        return b"-5\r\nhello\r\n0\r\n\r\n"
    if style == "huge":
        return b"fffffffffffffffffffff\r\n" + body
    if style == "ext":
        return out.replace(b"\r\n", b";name=value\r\n", 1) + b"0\r\n\r\n"
    if style == "no_end":
        return out
    if style == "trailer":
        return out + b"0\r\nX-Trailer: 1\r\n\r\n"
    return out + b"0\r\n\r\n"


GOOD_HEADERS = st.sampled_from([
    b"Expect: 100-continue", b"Connection: close", b"Connection: keep-alive, X-A",
    b"Content-Type: application/json", b"X-Request-Id: abc", b"Accept-Encoding: gzip",
    b"X-Fake-Delay: 0", b"Cookie: a=b", b"X-Request-Id: " + b"r" * 300])


@st.composite
def one_request(draw: Any, admin: bool) -> bytes:
    """Half well-formed (a method and path the port knows, sane headers and framing), the
    rest malformed in one or more ways."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=200))  # garbage
    paths = ADMIN_PATHS if admin else API_PATHS
    if draw(st.booleans()):
        line = b"%s %s HTTP/1.1" % (draw(st.sampled_from([b"GET", b"POST", b"PATCH", b"DELETE",
                                                          b"HEAD"])), draw(st.sampled_from(paths)))
        hs = [b"Host: localhost"]
        hs.append(b"Authorization: Bearer " + (ADMIN_TOKEN if admin else KEY).encode())
        hs += draw(st.lists(GOOD_HEADERS, max_size=3))
        body = draw(JSON_BODIES)
        framing = draw(st.sampled_from(["length", "length", "chunked", "none"]))
        malformed = False
    else:
        method = draw(METHODS)
        path = draw(st.one_of(st.sampled_from(paths), st.binary(max_size=30).filter(
            lambda b: b"\r" not in b and b"\n" not in b)))
        line = b" ".join(p for p in (method, path, draw(VERSIONS)))
        hs = draw(headers(admin))
        body = draw(BODIES)
        framing = draw(st.sampled_from(["length", "length", "chunked", "none", "wrong_length"]))
        malformed = True
    if framing == "length":
        hs.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong_length":
        hs.append(b"Content-Length: %d" % max(0, len(body) + draw(st.integers(-20, 20))))
    elif framing == "chunked":
        hs.append(b"Transfer-Encoding: chunked")
        body = draw(chunked(body)) if malformed else b"".join(
            b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:3], body[3:]) if p) + b"0\r\n\r\n"
    else:
        body = b""
    data = line + b"\r\n" + b"".join(h + b"\r\n" for h in hs) + b"\r\n" + body
    if draw(st.integers(0, 5)) == 0:
        data = data[:draw(st.integers(0, len(data)))]  # truncated
    return data


@st.composite
def connection(draw: Any, admin: bool) -> list[bytes]:
    """The bytes a client sends on one connection, in the pieces it sends them."""
    data = b"".join(draw(st.lists(one_request(admin), min_size=1, max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class FuzzHttpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None or event.get("isError"):
                self.failures.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.data = Path(tempfile.mkdtemp(prefix="flm-fuzz-http-"))
        self.addCleanup(shutil.rmtree, self.data, True)
        self.n = 0

    def harness(self) -> Harness:
        clock = InlineReactor()
        self.n += 1
        store = inline_store(self.data / f"{self.n}.sqlite3", clock)
        self.addCleanup(store.stopService)
        h = Harness(clock=clock)
        h.registry.store = store
        async def health() -> tuple[int, dict[str, Any]]:
            return 200, {"status": "ok"}
        apis = Apis(store, h.registry, FakeModels(), api_host="127.0.0.1", first_port=47400,
                    reserved_ports={8420})
        h.admin_site.resource = AdminApp(token=ADMIN_TOKEN, apis=apis, health=health).resource()
        return h

    def run_connection(self, h: Harness, site: Any, pieces: list[bytes]) -> None:
        del self.failures[:]
        channel, transport = h.connect(site)
        for piece in pieces:
            if transport.lost:
                break
            channel.dataReceived(piece)  # an exception here fails the example
            h.pump()
        h.advance(AFTER_ALL_DEADLINES, step=5.0)
        sent = b"".join(pieces)
        output = transport.value()
        responses, rest = parse_responses(output)
        statuses = [r[0] for r in responses]
        for status in statuses:
            event(f"status {status}")
        self.assertTrue(all(s < 500 for s in statuses), (statuses, sent[:300], output[:600]))
        self.assertTrue(transport.lost, ("still open", sent[:300], output[:300]))
        self.assertEqual(self.failures, [], sent[:300])
        self.assertEqual(site.channels, set())
        self.assertEqual((h.runtime.in_flight, h.runtime.gate.waiting, h.runtime.gate.in_use),
                         (0, 0, 0), sent[:300])
        gate = h.registry.upstream.gate
        self.assertEqual((gate.in_use, gate.waiting), (0, 0))

    @SETTINGS
    @given(pieces=connection(admin=False))
    def test_api_port(self, pieces: list[bytes]) -> None:
        h = self.harness()
        self.run_connection(h, h.api_site, pieces)
        # Every row belongs to a request that passed the key check and reached the resource.
        self.assertTrue(all(row[0] == 1 for row in h.rows))

    @SETTINGS
    @given(pieces=connection(admin=True))
    def test_admin_port(self, pieces: list[bytes]) -> None:
        h = self.harness()
        self.run_connection(h, h.admin_site, pieces)

    def test_some_examples_reach_the_backend(self) -> None:
        """The strategies are not all refusals: a plain valid request is proxied."""
        h = self.harness()
        data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (CHAT[:5], CHAT[5:]))
                + b"0\r\n\r\n")
        channel, transport = h.connect(h.api_site)
        channel.dataReceived(data)
        h.pump()
        self.assertEqual([r[0] for r in parse_responses(transport.value())[0]], [200])
        self.assertEqual(h.backend.requests, 1)
