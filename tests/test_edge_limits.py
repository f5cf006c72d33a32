"""Limits at the edge of every listening port, without sockets.

An :class:`~flm.gateway.registry.ApiSite` (with a fake backend behind a ``RequestTraversalAgent``)
and the :class:`~flm.admin.app.AdminSite` are fed raw bytes over an in-memory transport on
a ``MemoryReactorClock``; the harness here is reused by ``tests/test_fuzz_http.py``.
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from flm import keys
from flm.admin.app import AdminApp
from flm.admin.site import AdminSite
from flm.backends.ollama import OllamaBackend
from flm.gateway.admission import BackendGate
from flm.gateway.registry import ApiRuntime, ApiSite, Registry
from flm.gateway.resource import ROUTES, Upstream
from flm.store import ApiRecord
from tests.fakes.backend import FakeResource, FakeState

KEY = "flm-" + "k" * 43
ADMIN_TOKEN = "admin-edge-token"
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
IDLE_TIMEOUT = 75.0
MAX_BODY = 4096
MAX_CONNECTIONS = 4
CHAT = b'{"model":"x","messages":[{"role":"user","content":"hi"}]}'


# -- the harness ---------------------------------------------------------------------------

class Transport(StringTransport):
    """A client connection as a real TCP transport behaves: a close or an abort reaches the
    protocol one reactor turn later; a half-close only stops writes."""

    def __init__(self, clock: MemoryReactorClock, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000),
                         hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.clock = clock
        self.connected = True
        self.aborted = False
        self.write_closed = False
        self.lost = False

    def loseConnection(self) -> None:
        super().loseConnection()
        self._lose()

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().loseConnection()
        self._lose()

    def _lose(self) -> None:
        if self.connected:
            self.connected = False
            self.clock.callLater(0, self._lost)

    def hang_up(self) -> None:
        """The client closes its end."""
        self._lose()

    def _lost(self) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone("closed")))

    @property
    def closed(self) -> bool:
        """Closed, or half-closed after a final answer (the linger aborts it soon)."""
        return self.lost or self.write_closed or not self.connected


def parse_responses(data: bytes) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], bytes]:
    """Every complete HTTP/1.1 response in ``data`` (interim 1xx included) and what is left."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        assert parts[0] in (b"HTTP/1.1", b"HTTP/1.0"), lines[0]
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        # No body for 1xx, 204, 304, or (what this parser cannot know) an answer to HEAD,
        # which a following status line gives away.
        if 100 <= status < 200 or status in (204, 304) or rest.startswith(b"HTTP/1.1 "):
            out.append((status, headers, b""))
            data = rest
            continue
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            if len(rest) < n:
                break
            out.append((status, headers, rest[:n]))
            data = rest[n:]
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, left = _dechunk(rest)
            if body is None:
                break
            out.append((status, headers, body))
            data = left
        else:  # delimited by the close
            out.append((status, headers, rest))
            data = b""
    return out, data


def _dechunk(data: bytes) -> tuple[bytes | None, bytes]:
    body = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return None, data
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            _, sep, rest = rest.partition(b"\r\n")  # no trailers from Twisted
            return (body, rest) if sep else (None, data)
        if len(rest) < size + 2:
            return None, data
        body += rest[:size]
        data = rest[size + 2:]


def api_config(**overrides: Any) -> ApiRecord:
    fields: dict[str, Any] = dict(
        id=1, name="chat", host="127.0.0.1", port=8080, model="llama3.2:1b",
        status="running", status_reason=None, key_hash=keys.hash_key(KEY),
        key_prefix=keys.key_prefix(KEY), max_concurrent=1, max_queue=4, queue_timeout_s=60.0,
        upstream_timeout_s=30.0, rate_limit_rpm=None, priority=0, allow_unknown_model=False,
        created_at="2025-01-01T00:00:00.000Z", updated_at="2025-01-01T00:00:00.000Z",
        last_used_at=None)
    fields.update(overrides)
    return ApiRecord(**fields)


LIMITS = dict(max_body=MAX_BODY, idle_timeout=IDLE_TIMEOUT, header_timeout=HEADER_TIMEOUT,
              body_timeout=BODY_TIMEOUT, max_connections=MAX_CONNECTIONS)


class Harness:
    """One API site and one admin site on a shared clock, with a fake backend upstream."""

    def __init__(self, clock: MemoryReactorClock | None = None, admin: Any = None) -> None:
        self.clock = clock if clock is not None else MemoryReactorClock()
        self.rows: list[tuple[Any, ...]] = []
        self.backend = FakeState()
        self.agent = RequestTraversalAgent(FakeResource(self.backend, self.clock))
        self.upstream = upstream = Upstream(agent=self.agent, base_url=b"http://backend",
                            paths=frozenset(ROUTES), gate=BackendGate(2, self.clock),
                            clock=self.clock, record=self.rows.append,
                            backend=OllamaBackend("http://backend", HTTPClient(self.agent),
                                                  self.clock))
        self.registry = Registry(None, upstream, reactor=self.clock,  # type: ignore[arg-type]
                                 cache_size=16, grace_period=0.0, site_limits=LIMITS)
        config = api_config()
        self.runtime = ApiRuntime(self.registry, config)
        self.registry.runtimes[config.id] = self.runtime
        self.registry.cache.put(config)
        self.api_site = ApiSite(self.runtime, upstream, **LIMITS)
        self.runtime.site = self.api_site

        async def health() -> tuple[int, dict[str, Any]]:
            return 200, {"status": "ok"}
        if admin is None:
            admin = AdminApp(token=ADMIN_TOKEN, apis=None, health=health)  # type: ignore[arg-type]
        self.admin_site = AdminSite(admin.resource(), clock=self.clock, **LIMITS)
        self.admin_site.allowed_hosts = frozenset({"localhost", "127.0.0.1", "[::1]"})

    def connect(self, site: Any, peer: str = "127.0.0.1") -> tuple[Any, Transport]:
        transport = Transport(self.clock, peer)
        channel = site.buildProtocol(transport.getPeer())
        assert channel is not None, "connection refused"
        transport.protocol = channel
        channel.makeConnection(transport)
        return channel, transport

    def pump(self) -> None:
        """Let the upstream and every zero-delay call run."""
        for _ in range(20):
            self.agent.flush()
            self.clock.advance(0)

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Advance the clock in steps, pumping the upstream between them."""
        self.pump()
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            seconds -= step
            self.pump()

    def exchange(self, site: Any, data: bytes, peer: str = "127.0.0.1", hang_up: bool = True
                 ) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], Transport]:
        """Send ``data``, read the answers; then the client hangs up unless told not to."""
        channel, transport = self.connect(site, peer)
        channel.dataReceived(data)
        self.pump()
        responses, _ = parse_responses(transport.value())
        if hang_up:
            transport.hang_up()
            self.pump()
        return responses, transport


def request(method: bytes = b"POST", path: bytes = b"/v1/chat/completions", *,
            key: str | None = KEY, body: bytes = CHAT, headers: list[bytes] = (),  # type: ignore[assignment]
            host: bytes = b"127.0.0.1:8080") -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: " + host]
    if key is not None:
        lines.append(b"Authorization: Bearer " + key.encode())
    lines += list(headers)
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def openai_error(response: tuple[int, dict[bytes, bytes], bytes], status: int, code: str) -> None:
    got, headers, body = response
    assert got == status, (got, body)
    error = json.loads(body)["error"]
    assert error["code"] == code, error
    assert error["message"] and error["type"], error


def admin_error(response: tuple[int, dict[bytes, bytes], bytes], status: int, code: str) -> None:
    got, headers, body = response
    assert got == status, (got, body)
    assert json.loads(body) == {"error": {"code": code, "message": json.loads(body)["error"]["message"]}}
    assert json.loads(body)["error"]["message"]


# -- the tests -----------------------------------------------------------------------------

class EdgeLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def both_sites(self) -> list[tuple[Any, Any]]:
        return [(self.h.api_site, openai_error), (self.h.admin_site, admin_error)]

    def assert_refused_and_closed(self, transport: Transport) -> None:
        """A refusal half-closes at once (the client reads the answer) and aborts after the
        linger, whatever the client still sends."""
        self.assertTrue(transport.write_closed or transport.disconnecting)
        self.h.advance(3)
        self.assertTrue(transport.lost, "the connection was not closed after the linger")

    def test_a_valid_request_goes_through(self) -> None:
        responses, transport = self.h.exchange(self.h.api_site, request())
        self.assertEqual([r[0] for r in responses], [200], transport.value()[:300])
        self.assertEqual(len(self.h.rows), 1)
        self.assertEqual(self.runtime_counts(), (0, 0))

    def runtime_counts(self) -> tuple[int, int]:
        return self.h.runtime.in_flight, self.h.runtime.gate.waiting

    def test_too_many_headers_is_431(self) -> None:
        extra = [b"X-H%d: v" % i for i in range(120)]
        for site, check in self.both_sites():
            responses, transport = self.h.exchange(site, request(headers=extra), hang_up=False)
            self.assertEqual(len(responses), 1, transport.value()[:300])
            check(responses[0], 431, "request_header_fields_too_large")
            self.assertEqual(responses[0][1][b"connection"], b"close")
            self.assert_refused_and_closed(transport)
        self.assertEqual(self.h.backend.requests, 0)

    def test_header_limits_count_each_request_on_keep_alive(self) -> None:
        """The header count and size are per request (FLM counts them itself)."""
        extra = [b"X-H%d: %s" % (i, b"v" * 170) for i in range(70)]  # 70 headers, ~12.5 KB
        channel, transport = self.h.connect(self.h.api_site)
        for _ in range(3):
            channel.dataReceived(request(headers=extra))
            self.h.pump()
        self.assertEqual([r[0] for r in parse_responses(transport.value())[0]], [200] * 3,
                         transport.value()[:500])

    def test_headers_too_large_in_total_is_431(self) -> None:
        extra = [b"X-Big%d: %s" % (i, b"v" * 12_000) for i in range(3)]  # each line < 16 KiB
        for site, check in self.both_sites():
            responses, transport = self.h.exchange(site, request(headers=extra), hang_up=False)
            self.assertEqual(len(responses), 1, transport.value()[:300])
            check(responses[0], 431, "request_header_fields_too_large")
            self.assert_refused_and_closed(transport)

    def test_one_header_line_over_16_kib_is_431(self) -> None:
        extra = [b"X-Huge: " + b"v" * (17 * 1024)]
        for site, check in self.both_sites():
            responses, transport = self.h.exchange(site, request(headers=extra), hang_up=False)
            self.assertEqual(len(responses), 1, transport.value()[:300])
            check(responses[0], 431, "request_header_fields_too_large")
            self.assert_refused_and_closed(transport)

    def test_huge_request_line_is_414(self) -> None:
        path = b"/v1/chat/completions?" + b"q" * (20 * 1024)
        for site, check in self.both_sites():
            responses, transport = self.h.exchange(site, request(path=path), hang_up=False)
            self.assertEqual(len(responses), 1, transport.value()[:300])
            check(responses[0], 414, "uri_too_long")
            self.assert_refused_and_closed(transport)

    def test_trickled_headers_are_408_at_the_header_deadline(self) -> None:
        """One byte every 2 s resets the idle timeout each time; the header deadline does not."""
        for site, check in self.both_sites():
            channel, transport = self.h.connect(site)
            data = request()
            channel.dataReceived(data[:10])
            sent = 10
            elapsed = 0.0
            while not transport.value() and elapsed < HEADER_TIMEOUT + 5:
                self.h.clock.advance(2.0)
                elapsed += 2.0
                channel.dataReceived(data[sent:sent + 1])
                sent += 1
            self.assertGreaterEqual(elapsed, HEADER_TIMEOUT)
            self.assertLessEqual(elapsed, HEADER_TIMEOUT + 2)
            self.assertLess(sent, data.index(b"\r\n\r\n"), "the headers were complete")
            responses, _ = parse_responses(transport.value())
            check(responses[0], 408, "request_timeout")
            self.assert_refused_and_closed(transport)

    def test_idle_timeout_alone_would_not_fire_on_a_trickle(self) -> None:
        """The premise of the header deadline: bytes every 2 s keep Twisted's idle timer
        away, so without the deadline a trickle holds a connection past the idle timeout."""
        upstream = self.h.registry.upstream
        site = ApiSite(self.h.runtime, upstream, **{**LIMITS, "header_timeout": 100 * IDLE_TIMEOUT})
        channel, transport = self.h.connect(site)
        data = request()
        elapsed, sent = 0.0, 0
        while elapsed < 2 * IDLE_TIMEOUT:
            self.h.clock.advance(2.0)
            elapsed += 2.0
            channel.dataReceived(data[sent:sent + 1])
            sent += 1
        self.assertLess(sent, data.index(b"\r\n\r\n"), "the headers were complete")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.lost or transport.disconnecting or transport.write_closed)

    def test_slow_body_is_408_at_the_body_deadline(self) -> None:
        body = b'{"model":"x","prompt":"' + b"a" * 200 + b'"}'
        for site, check, extra in ((self.h.api_site, openai_error, b""),
                                   (self.h.admin_site, admin_error, b"")):
            channel, transport = self.h.connect(site)
            data = request(path=b"/v1/completions" if site is self.h.api_site else b"/api/apis",
                           body=body, key=KEY if site is self.h.api_site else ADMIN_TOKEN)
            head = data.index(b"\r\n\r\n") + 4
            channel.dataReceived(data[:head])
            sent, elapsed = head, 0.0
            while not transport.value() and elapsed < BODY_TIMEOUT + 5:
                self.h.clock.advance(2.0)
                elapsed += 2.0
                channel.dataReceived(data[sent:sent + 5])
                sent += 5
            self.assertGreaterEqual(elapsed, BODY_TIMEOUT)
            self.assertLessEqual(elapsed, BODY_TIMEOUT + 2)
            self.assertLess(sent, len(data))
            responses, _ = parse_responses(transport.value())
            check(responses[0], 408, "request_timeout")
            self.assert_refused_and_closed(transport)
        self.assertEqual(self.h.backend.requests, 0)
        self.assertEqual(self.runtime_counts(), (0, 0))

    def test_body_deadline_is_per_request_on_keep_alive(self) -> None:
        """A second request on the same connection gets its own header deadline."""
        channel, transport = self.h.connect(self.h.api_site)
        channel.dataReceived(request())
        self.h.pump()
        self.assertEqual([r[0] for r in parse_responses(transport.value())[0]], [200])
        self.h.advance(HEADER_TIMEOUT * 2)  # idle between requests: no 408
        self.assertEqual(len(parse_responses(transport.value())[0]), 1)
        self.assertFalse(transport.closed)
        channel.dataReceived(request()[:20])
        self.h.advance(HEADER_TIMEOUT + 1)
        responses, _ = parse_responses(transport.value())
        self.assertEqual([r[0] for r in responses], [200, 408])

    def test_model_discovery_without_a_backend_adapter_is_a_502_not_a_crash(self) -> None:
        self.h.upstream.backend = None
        responses, _ = self.h.exchange(self.h.api_site, request(method=b"GET", path=b"/api/tags",
                                                                 body=b""))
        openai_error(responses[0], 502, "backend_unavailable")

    def test_a_request_that_arrives_whole_arms_no_deadline(self) -> None:
        """The deadline timer is armed only for a request still incomplete after the
        bytes at hand (three timer calls a request saved); a partial one gets it."""
        channel, transport = self.h.connect(self.h.api_site)
        armed: list[float] = []
        call_later = channel.callLater

        def counting(seconds: float, f: Any, *args: Any) -> Any:
            if getattr(f, "__name__", "") == "_late":
                armed.append(seconds)
            return call_later(seconds, f, *args)
        channel.callLater = counting
        channel.dataReceived(request())
        self.h.pump()
        self.assertEqual([r[0] for r in parse_responses(transport.value())[0]], [200])
        self.assertEqual(armed, [])
        channel.dataReceived(request()[:20])
        self.assertEqual(armed, [HEADER_TIMEOUT])

    def test_idle_keep_alive_connection_is_closed(self) -> None:
        channel, transport = self.h.connect(self.h.api_site)
        self.h.advance(IDLE_TIMEOUT + 1, step=5)
        self.assertTrue(transport.disconnecting or transport.lost)

    def test_at_the_cap_the_port_stops_accepting_and_resumes_below_it(self) -> None:
        for site in (self.h.api_site, self.h.admin_site):
            site.listener = listener = _Listener()
            opened = [self.h.connect(site) for _ in range(MAX_CONNECTIONS - 1)]
            self.assertEqual(listener.calls, [])
            opened.append(self.h.connect(site))
            self.assertEqual(listener.calls, ["stop"])
            # Accepted in the same reactor turn: served, never closed.
            late = self.h.connect(site)
            self.assertFalse(late[1].closed)
            self.assertEqual(listener.calls, ["stop"])
            late[1].loseConnection()
            self.h.pump()
            self.assertEqual(listener.calls, ["stop"])  # still at the cap
            opened[0][1].loseConnection()
            self.h.pump()
            self.assertEqual(listener.calls, ["stop", "start"])
            for _, t in opened[1:]:
                t.loseConnection()
            self.h.pump()
            self.assertEqual(site.channels, set())
            self.assertEqual(listener.calls, ["stop", "start"])

    def test_a_closed_port_is_not_resumed(self) -> None:
        site = self.h.api_site
        site.listener = listener = _Listener()
        opened = [self.h.connect(site) for _ in range(MAX_CONNECTIONS)]
        listener.connected = False  # stopListening happened while paused
        opened[0][1].loseConnection()
        self.h.pump()
        self.assertEqual(listener.calls, ["stop"])

    def test_connection_cap_does_not_stop_service_for_the_others(self) -> None:
        """The trickling connections hit their deadline and free their places."""
        trickling = [self.h.connect(self.h.api_site) for _ in range(MAX_CONNECTIONS)]
        for channel, _ in trickling:
            channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\n")
        self.h.advance(HEADER_TIMEOUT + 3)
        self.assertEqual(self.h.api_site.channels, set())
        responses, _ = self.h.exchange(self.h.api_site, request())
        self.assertEqual([r[0] for r in responses], [200])

    def test_expect_100_continue_is_not_answered_for_a_refused_request(self) -> None:
        big = b"x" * (MAX_BODY + 1)
        cases = [
            (self.h.api_site, request(key="flm-wrong", body=b"", headers=[
                b"Expect: 100-continue", b"Content-Length: 100"]), 401),
            (self.h.api_site, request(key=None, body=b"", headers=[
                b"Expect: 100-continue", b"Content-Length: 100"]), 401),
            (self.h.api_site, request(body=b"", headers=[
                b"Expect: 100-continue", b"Content-Length: %d" % len(big)]), 413),
            (self.h.admin_site, request(path=b"/api/apis", key=ADMIN_TOKEN, body=b"", headers=[
                b"Expect: 100-continue", b"Content-Length: %d" % len(big)]), 413),
            (self.h.admin_site, request(path=b"/api/apis", key=ADMIN_TOKEN, host=b"evil.example",
                                        body=b"", headers=[b"Expect: 100-continue",
                                                           b"Content-Length: 10"]), 421),
        ]
        for site, data, status in cases:
            # request() adds its own Content-Length: 0 for POST; drop it.
            data = data.replace(b"Content-Length: 0\r\n", b"")
            responses, transport = self.h.exchange(site, data, hang_up=False)
            self.assertNotIn(b"100 Continue", transport.value())
            self.assertEqual([r[0] for r in responses], [status], transport.value()[:300])
            self.assertEqual(responses[0][1][b"connection"], b"close")
            # The client uploads anyway: thrown away, and the connection still ends.
            transport.protocol.dataReceived(big[:100])
            self.h.advance(3)
            self.assertTrue(transport.lost)
        self.assertEqual(self.h.backend.requests, 0)

    def test_expect_100_continue_is_answered_for_an_accepted_request(self) -> None:
        channel, transport = self.h.connect(self.h.api_site)
        data = request(headers=[b"Expect: 100-continue"])
        head = data.index(b"\r\n\r\n") + 4
        channel.dataReceived(data[:head])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 100 Continue\r\n"),
                        transport.value()[:100])
        channel.dataReceived(data[head:])
        self.h.pump()
        self.assertEqual([r[0] for r in parse_responses(transport.value())[0]], [100, 200])

    def test_declared_body_over_the_limit_is_413_before_it_is_read(self) -> None:
        big = b"x" * (MAX_BODY + 1)
        responses, transport = self.h.exchange(self.h.api_site, request(body=big))
        openai_error(responses[0], 413, "request_too_large")
        self.assertEqual(self.h.backend.requests, 0)
        self.assertEqual(self.h.rows, [])

    def test_early_refusal_answers_in_the_clients_http_version(self) -> None:
        """A refusal sent before ``requestReceived`` takes the version from the request
        line, which ``GuardedChannel`` records itself."""
        data = request(body=b"x" * (MAX_BODY + 1)).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
        channel, transport = self.h.connect(self.h.api_site)
        channel.dataReceived(data)
        self.h.pump()
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 413 "), transport.value()[:80])

    def test_chunked_body_over_the_limit_is_413(self) -> None:
        chunk = b"x" * 1024
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
        data = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        responses, transport = self.h.exchange(self.h.api_site, data, hang_up=False)
        self.assertEqual(len(responses), 1)
        openai_error(responses[0], 413, "request_too_large")
        self.assert_refused_and_closed(transport)
        self.assertEqual(self.h.backend.requests, 0)

    def test_admin_answers_421_to_a_foreign_host(self) -> None:
        for host in (b"evil.example", b"evil.example:8420", b"127.0.0.1.evil.example",
                     b"localhost.", b""):
            responses, transport = self.h.exchange(
                self.h.admin_site, request(b"GET", b"/health", key=None, body=b"", host=host))
            self.assertEqual(len(responses), 1, (host, transport.value()[:300]))
            admin_error(responses[0], 421, "host_not_allowed")
        for host in (b"localhost", b"localhost:8420", b"127.0.0.1:8420", b"[::1]:8420",
                     b"LOCALHOST"):
            responses, _ = self.h.exchange(
                self.h.admin_site, request(b"GET", b"/health", key=None, body=b"", host=host))
            self.assertEqual([r[0] for r in responses], [200], host)

    def test_twenty_wrong_keys_then_429_with_retry_after_per_address(self) -> None:
        attacker, neighbour = "10.0.0.1", "10.0.0.2"
        for i in range(20):
            responses, _ = self.h.exchange(self.h.api_site, request(key=f"flm-guess-{i}"),
                                           peer=attacker)
            openai_error(responses[0], 401, "invalid_api_key")
        # The 21st wrong key: 429, without a log row; the right key still works.
        for key in ("flm-guess-21", None):
            responses, _ = self.h.exchange(self.h.api_site, request(key=key), peer=attacker)
            openai_error(responses[0], 429, "rate_limited")
            retry = int(responses[0][1][b"retry-after"])
            self.assertTrue(1 <= retry <= 60, retry)
        self.assertEqual(self.h.backend.requests, 0)
        self.assertEqual(self.h.rows, [])
        self.assertEqual(self.h.runtime.refused_keys, 22)
        responses, _ = self.h.exchange(self.h.api_site, request(), peer=attacker)
        self.assertEqual([r[0] for r in responses], [200])
        # Another address is not affected.
        responses, _ = self.h.exchange(self.h.api_site, request(key="flm-typo"), peer=neighbour)
        openai_error(responses[0], 401, "invalid_api_key")
        responses, _ = self.h.exchange(self.h.api_site, request(), peer=neighbour)
        self.assertEqual([r[0] for r in responses], [200])
        # After the window the attacker's wrong keys are 401 again.
        self.h.advance(61, step=10)
        responses, _ = self.h.exchange(self.h.api_site, request(key="flm-guess-x"),
                                       peer=attacker)
        openai_error(responses[0], 401, "invalid_api_key")
        self.assertEqual(len(self.h.rows), 2)

    def test_retry_after_counts_down_the_window(self) -> None:
        for i in range(20):
            self.h.exchange(self.h.api_site, request(key="flm-no"), peer="10.0.0.9")
        self.h.advance(30, step=10)
        responses, _ = self.h.exchange(self.h.api_site, request(key="flm-no"), peer="10.0.0.9")
        openai_error(responses[0], 429, "rate_limited")
        self.assertEqual(int(responses[0][1][b"retry-after"]), 30)

    def test_admin_path_that_is_not_utf8_is_a_json_400_without_a_traceback(self) -> None:
        """Klein answered text/html 'Non-UTF-8 encoding in URL.' and logged a traceback."""
        from twisted.logger import globalLogPublisher
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        for path in (b"/api/apis/%ff", b"/nope%c3"):
            responses, _ = self.h.exchange(self.h.admin_site, request(
                b"GET", path, key=ADMIN_TOKEN, body=b"", host=b"localhost"))
            admin_error(responses[0], 400, "bad_request")
        self.assertEqual([e for e in logged if e.get("log_failure") or e.get("isError")], [])
        responses, _ = self.h.exchange(self.h.admin_site, request(
            b"GET", b"/health?q=%ff", key=None, body=b"", host=b"localhost"))
        self.assertEqual([r[0] for r in responses], [200])


class _Listener:
    """Stands for the listening ``tcp.Port``: records pauses and resumes."""

    connected = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def stopReading(self) -> None:
        self.calls.append("stop")

    def startReading(self) -> None:
        self.calls.append("start")
