"""The proxy of one running API, over in-memory transports, a real Agent, a fake model server.

Raw HTTP bytes go into ``ApiSite.buildProtocol(addr)`` on a ``StringTransport``; what FLM
writes back is parsed here. FLM reaches the model server with Twisted's real ``Agent`` and
a persistent pool over in-memory connections (``tests/fakes/scripted.py``); the model
server is a twisted.web resource whose requests the test answers (or not) chunk by chunk;
time is a ``task.Clock``.
"""

from __future__ import annotations

import json
import re
from typing import Any


from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from flm import keys
from flm.backends.ollama import OLLAMA_PATHS
from flm.gateway.admission import BackendGate
from flm.gateway.relay import usage_from_tail
from flm.gateway.registry import ApiRuntime, ApiSite, Registry
from flm.gateway.resource import Upstream
from flm.store import ApiRecord
from flm.store.db import LOG_COLUMNS
from tests.fakes.scripted import ScriptedBackend

KEY = "flm-" + "k" * 43
MAX_BODY = 4096
T0 = 1000.0


def api_config(**over: Any) -> ApiRecord:
    fields: dict[str, Any] = dict(
        id=1, name="chat", host="127.0.0.1", port=8080, model="llama3.2", status="running",
        status_reason=None, key_hash=keys.hash_key(KEY), key_prefix=keys.key_prefix(KEY),
        max_concurrent=1, max_queue=1, queue_timeout_s=10.0, upstream_timeout_s=30.0,
        rate_limit_rpm=None, priority=0, allow_unknown_model=False,
        created_at="2026-01-01T00:00:00.000Z", updated_at="2026-01-01T00:00:00.000Z",
        last_used_at=None)
    fields.update(over)
    return ApiRecord(**fields)


# the client side

def parse_response(data: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes, bytes]:
    """(status, headers, body, rest) of the first HTTP/1.1 response in ``data``."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if b"content-length" in headers:
        n = int(headers[b"content-length"][0])
        return status, headers, rest[:n], rest[n:]
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return status, headers, body, rest.partition(b"\r\n")[2]
            body, rest = body + rest[:size], rest[size + 2:]
    return status, headers, rest, b""


class Response:
    def __init__(self, data: bytes) -> None:
        self.raw = data
        self.status, self.headers, self.body, self.rest = parse_response(data)

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, path: str, body: bytes | None = None, *, key: str | None = KEY,
         headers: dict[str, str] | None = None, chunked: bool = False,
         length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8080"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if body is not None and not chunked:
        raw += body
    return raw


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHAT = json.dumps({"model": "whatever", "messages": [{"role": "user", "content": "hi"}]}
                  ).encode()


class ProxyTestCase(SynchronousTestCase):
    backend_limit = 4

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.backend = ScriptedBackend(self.clock)
        self.rows: list[tuple[Any, ...]] = []
        self.upstream = Upstream(agent=self.backend.agent, base_url=b"http://backend:11434",
                                 paths=OLLAMA_PATHS,
                                 gate=BackendGate(self.backend_limit, self.clock),
                                 clock=self.clock, record=self.rows.append)
        limits = {"max_body": MAX_BODY, "idle_timeout": 75.0}
        self.registry = Registry(None, self.upstream, reactor=self.clock,  # type: ignore[arg-type]
                                 cache_size=10, grace_period=0.0, site_limits=limits)
        self.runtime = self.run_api(api_config())
        self.site = self.runtime.site

    def tearDown(self) -> None:
        # Finish every request still under way (answer the backend calls, let timeouts
        # fire): a coroutine left suspended would be finalized by gc in a later test.
        for _ in range(100):
            pending = [c for c in self.backend.calls if not c.answered]
            if not pending:
                break
            for call in pending:
                call.respond(200, b"{}")
        self.clock.advance(3600)

    def run_api(self, config: ApiRecord) -> ApiRuntime:
        runtime = ApiRuntime(self.registry, config)
        runtime.site = ApiSite(runtime, self.upstream, **self.registry.site_limits)
        self.registry.runtimes[config.id] = runtime
        self.registry.cache.put(config)
        return runtime

    def patch(self, **over: Any) -> ApiRecord:
        """What PATCH does to a running API: new config in the cache, limits applied."""
        config = attrs_evolve(self.runtime.config, **over)
        self.registry.changed(config)
        return config

    def connect(self, port: int = 50000) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", "127.0.0.1", port)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer,
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(transport)
        return protocol, transport

    def send(self, raw: bytes) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect()
        protocol.dataReceived(raw)
        self.backend.flush()
        self.last = transport
        return protocol, transport

    def request(self, raw: bytes, answer: Any = None) -> Response | None:
        """Send, let the fake backend answer with ``answer`` (code, body), read the reply
        (None while nothing is written back)."""
        protocol, transport = self.send(raw)
        if answer is not None:
            self.assertEqual(len(self.backend.calls), 1)
            self.backend.calls[-1].respond(*answer)
        return Response(transport.value()) if transport.value() else None

    def send_and_value(self) -> bytes:
        """What was written back on the last connection."""
        return self.last.value()

    def row(self, index: int = -1) -> dict[str, Any]:
        return dict(zip(("api_id",) + LOG_COLUMNS[1:], self.rows[index]))

    def assert_error(self, response: Response, status: int, code: str) -> None:
        self.assertEqual(response.status, status, response.raw)
        body = response.json
        self.assertEqual(set(body), {"error"})
        self.assertEqual(body["error"]["code"], code)
        self.assertTrue(body["error"]["message"])
        self.assertIn("type", body["error"])
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertIsNotNone(response.header(b"x-request-id"))


def attrs_evolve(config: ApiRecord, **over: Any) -> ApiRecord:
    import attrs
    return attrs.evolve(config, **over)


class KeyTests(ProxyTestCase):
    def test_bad_keys_get_the_same_401(self) -> None:
        bodies = set()
        for key, extra in ((None, {}), ("", {}), ("flm-wrong", {}), (KEY + "x", {}),
                           (KEY[:-1], {}), (None, {"Authorization": f"Basic {KEY}"}),
                           (None, {"Authorization": KEY})):
            response = self.request(http("POST", "/v1/chat/completions", CHAT, key=key,
                                         headers=extra))
            self.assert_error(response, 401, "invalid_api_key")
            self.assertEqual(response.header(b"www-authenticate"), b"Bearer")
            bodies.add(response.body)
        self.assertEqual(len(bodies), 1)
        self.assertEqual(self.backend.calls, [])
        self.assertEqual(self.rows, [])  # refused keys are counted, not logged
        self.assertEqual(self.runtime.refused_keys, 7)

    def test_401_before_the_body_and_no_100_continue(self) -> None:
        protocol, transport = self.send(http(
            "POST", "/v1/chat/completions", key="flm-wrong", length=1000,
            headers={"Expect": "100-continue"}))
        out = transport.value()
        self.assertNotIn(b"100 Continue", out)
        response = Response(out)
        self.assert_error(response, 401, "invalid_api_key")
        self.assertEqual(response.header(b"connection"), b"close")
        # whatever the client still sends is discarded, then the connection is cut
        protocol.dataReceived(b"x" * 1000)
        self.assertEqual(transport.value(), out)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(5)
        self.assertEqual(self.backend.calls, [])

    def test_good_key_with_expect_gets_100_continue(self) -> None:
        protocol, transport = self.send(http(
            "POST", "/v1/chat/completions", length=len(CHAT), headers={"Expect": "100-continue"}))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
        protocol.dataReceived(CHAT)
        self.assertEqual(len(self.backend.calls), 1)

    def test_every_path_needs_the_key(self) -> None:
        for method, path in (("GET", "/v1/models"), ("POST", "/api/pull"), ("GET", "/"),
                             ("POST", "/v1/embeddings")):
            self.assert_error(self.request(http(method, path, b"{}", key=None)), 401,
                              "invalid_api_key")

    def test_cold_cache_checks_the_key_after_the_body_the_same_way(self) -> None:
        early = self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-wrong"))
        config = self.runtime.config

        class Store:
            async def get_api(self, api_id: int) -> ApiRecord:
                return config
        self.registry.store = Store()  # type: ignore[assignment]
        self.registry.cache.drop(config.id)
        late = self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-wrong"))
        self.assertEqual((late.status, late.body), (early.status, early.body))
        self.assertEqual(self.backend.calls, [])
        self.request(http("POST", "/v1/chat/completions", CHAT))
        self.assertEqual(len(self.backend.calls), 1)
        self.assertIs(self.registry.cache.by_port(8080), config)

    def test_key_guessing_from_one_address_is_slowed(self) -> None:
        for _ in range(20):
            self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        response = self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        self.assert_error(response, 429, "rate_limited")
        self.assertGreaterEqual(int(response.header(b"retry-after")), 1)
        self.clock.advance(int(response.header(b"retry-after")))
        response = self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        self.assert_error(response, 401, "invalid_api_key")
        self.assertEqual(self.backend.calls, [])

    def test_rotated_key_stops_working_at_once(self) -> None:
        new = "flm-" + "n" * 43
        self.patch(key_hash=keys.hash_key(new), key_prefix=keys.key_prefix(new))
        self.assert_error(self.request(http("POST", "/v1/chat/completions", CHAT)), 401,
                          "invalid_api_key")
        self.request(http("POST", "/v1/chat/completions", CHAT, key=new))
        self.assertEqual(len(self.backend.calls), 1)


class BodyLimitTests(ProxyTestCase):
    def test_declared_length_over_the_limit(self) -> None:
        protocol, transport = self.send(http("POST", "/v1/chat/completions",
                                             length=MAX_BODY + 1,
                                             headers={"Expect": "100-continue"}))
        out = transport.value()
        self.assertNotIn(b"100 Continue", out)
        response = Response(out)
        self.assert_error(response, 413, "request_too_large")
        self.assertEqual(response.header(b"connection"), b"close")
        self.assertEqual(self.backend.calls, [])

    def test_declared_length_at_the_limit_is_fine(self) -> None:
        body = json.dumps({"messages": [], "pad": "x" * (MAX_BODY - 30)}).encode()
        body += b" " * (MAX_BODY - len(body))
        self.request(http("POST", "/v1/chat/completions", body))
        self.assertEqual(len(self.backend.calls), 1)

    def test_chunked_body_growing_over_the_limit(self) -> None:
        protocol, transport = self.send(http("POST", "/v1/chat/completions", chunked=True))
        self.assertEqual(transport.value(), b"")
        for _ in range(3):
            protocol.dataReceived(chunk(b" " * 1000))
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(chunk(b" " * 1500))
        response = Response(transport.value())
        self.assert_error(response, 413, "request_too_large")
        protocol.dataReceived(chunk(b" " * 1500) + b"0\r\n\r\n")
        self.assertEqual(self.backend.calls, [])

    def test_413_comes_before_the_key_check(self) -> None:
        response = self.request(http("POST", "/v1/chat/completions", key=None,
                                     length=MAX_BODY * 10))
        self.assert_error(response, 413, "request_too_large")


class RoutingTests(ProxyTestCase):
    def test_model_management_and_unknown_paths_are_404(self) -> None:
        for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
                     "/api/ps", "/api/embeddings", "/", "/v1/chat/completions/x", "/v2/chat",
                     "/v1/../api/pull", "/API/CHAT"):
            with self.subTest(path=path):
                self.assert_error(self.request(http("POST", path, b'{"name": "x"}')), 404,
                                  "not_found")
        self.assertEqual(self.backend.calls, [])
        self.assertEqual({r[4] for r in self.rows}, {404})

    def test_405(self) -> None:
        for method in ("GET", "PUT", "DELETE"):
            self.assert_error(self.request(http(method, "/v1/chat/completions")), 405,
                              "method_not_allowed")
        self.assert_error(self.request(http("POST", "/v1/models", b"{}")), 405,
                          "method_not_allowed")
        self.assertEqual(self.backend.calls, [])

    def test_v1_models_answered_locally(self) -> None:
        response = self.request(http("GET", "/v1/models"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json["data"][0]["id"], "llama3.2")
        self.assertEqual(response.json["object"], "list")
        self.assertEqual(self.backend.calls, [])

    def test_every_allowed_path_is_forwarded(self) -> None:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/api/chat", "/api/generate", "/api/embed"):
            self.request(http("POST", path, b'{"prompt": "x"}'))
            self.assertEqual(self.backend.calls[-1].uri, b"http://backend:11434" + path.encode())
            self.backend.calls[-1].respond(200, b"{}")


class JsonTests(ProxyTestCase):
    BAD = {
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
        "deep object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "huge integer": b'{"max_tokens": ' + b"9" * 5000 + b"}",
        "bad utf-8": b'{"prompt": "\xff\xfe"}',
        "lone surrogate": b'{"prompt": "\\ud800"}',
        # the model already the API's: the body would otherwise go on as it is
        "lone surrogate, model kept": b'{"model": "llama3.2", "prompt": "\\ud800"}',
        "NaN": b'{"temperature": NaN}',
        "Infinity": b'{"temperature": Infinity}',
        "-Infinity": b'{"temperature": -Infinity}',
        "array": b"[1, 2]",
        "string": b'"hi"',
        "null": b"null",
        "empty": b"",
        "truncated": b'{"prompt": ',
        "trailing garbage": b'{"prompt": "x"} {}',
    }

    def setUp(self) -> None:
        super().setUp()
        self.site.max_body = 1024 * 1024

    def test_each_failure_mode_is_400_invalid_json(self) -> None:
        for name, body in self.BAD.items():
            with self.subTest(name):
                self.assert_error(self.request(http("POST", "/v1/chat/completions", body)),
                                  400, "invalid_json")
        self.assertEqual(self.backend.calls, [])
        self.assertEqual([r[15] for r in self.rows], ["invalid_json"] * len(self.BAD))

    def test_model_is_rewritten_and_the_rest_kept(self) -> None:
        body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "h\u00e9"}],
                           "temperature": 0.5, "n": 12345678901234567890}).encode()
        self.request(http("POST", "/v1/chat/completions", body))
        sent = self.backend.calls[0].json
        self.assertEqual(sent, {"model": "llama3.2", "temperature": 0.5,
                                "messages": [{"role": "user", "content": "h\u00e9"}],
                                "n": 12345678901234567890})
        self.assertEqual(self.backend.calls[0].method, b"POST")
        self.assertEqual(self.backend.calls[0].headers.getRawHeaders(b"content-type"),
                         [b"application/json"])

    def test_the_row_names_the_node_that_served_it(self) -> None:
        self.upstream.node = "gpu-a:8420"
        self.request(http("POST", "/v1/chat/completions", CHAT), answer=(200, b"{}"))
        self.assertEqual(self.row()["node"], "gpu-a:8420")

    def test_a_body_that_needs_no_change_goes_on_byte_for_byte(self) -> None:
        body = b'{ "model" : "llama3.2", "messages": [{"role": "user", "content": "hi"}] }'
        self.request(http("POST", "/v1/chat/completions", body))
        self.assertEqual(self.backend.calls[0].body, body)

    # Forwarded as they are, these would name another model to a backend whose parser
    # keeps the first key.
    def test_a_second_model_key_is_written_anew(self) -> None:
        self.request(http("POST", "/api/generate", b'{"model": "other", "model": "llama3.2"}'))
        self.assertEqual(self.backend.calls[0].body, b'{"model":"llama3.2"}')

    def test_a_model_key_spelled_with_an_escape_is_written_anew(self) -> None:
        self.request(http("POST", "/api/generate",
                          b'{"mod\\u0065l": "other", "model": "llama3.2"}'))
        self.assertEqual(self.backend.calls[0].body, b'{"model":"llama3.2"}')

    def test_model_added_when_missing(self) -> None:
        self.request(http("POST", "/api/generate", b'{"prompt": "x"}'))
        self.assertEqual(self.backend.calls[0].json["model"], "llama3.2")

    def test_patched_model_applies_to_the_next_request(self) -> None:
        self.patch(model="qwen2.5:0.5b")
        self.request(http("POST", "/api/generate", b'{"model": "llama3.2"}'))
        self.assertEqual(self.backend.calls[0].json["model"], "qwen2.5:0.5b")


class HeaderTests(ProxyTestCase):
    def test_hop_by_hop_and_connection_listed_headers_are_not_forwarded(self) -> None:
        self.request(http("POST", "/v1/chat/completions", CHAT, headers={
            "Connection": "keep-alive, X-Private, X-Also-Private",
            "Keep-Alive": "timeout=5", "X-Private": "secret", "X-Also-Private": "1",
            "TE": "trailers", "Upgrade": "h2c", "Proxy-Authorization": "Basic eA==",
            "Proxy-Connection": "keep-alive", "Trailer": "X-T", "Cookie": "a=b",
            "X-Custom": "kept", "OpenAI-Organization": "org-1", "User-Agent": "test/1",
        }))
        sent = self.backend.calls[0].headers
        names = {name.lower() for name, _ in sent.getAllRawHeaders()}
        for dropped in (b"authorization", b"connection", b"keep-alive", b"x-private",
                        b"x-also-private", b"te", b"upgrade", b"proxy-authorization",
                        b"proxy-connection", b"trailer", b"cookie", b"transfer-encoding"):
            self.assertNotIn(dropped, names)
        # The client's Host is not forwarded: the model server sees its own.
        self.assertEqual(sent.getRawHeaders(b"host"), [b"backend:11434"])
        self.assertEqual(sent.getRawHeaders(b"x-custom"), [b"kept"])
        self.assertEqual(sent.getRawHeaders(b"openai-organization"), [b"org-1"])
        self.assertEqual(sent.getRawHeaders(b"user-agent"), [b"test/1"])
        self.assertNotIn(KEY.encode(), b"".join(v for _, vs in sent.getAllRawHeaders()
                                                for v in vs))

    def test_hop_by_hop_response_headers_are_not_returned(self) -> None:
        self.request(http("POST", "/v1/chat/completions", CHAT))
        self.backend.calls[0].respond(200, b"{}", headers={
            b"connection": b"X-Up", b"x-up": b"1", b"keep-alive": b"timeout=1",
            b"x-backend": b"kept", b"set-cookie": b"a=b", b"server": b"ollama"})
        response = Response(self.send_and_value())
        self.assertEqual(response.header(b"x-backend"), b"kept")
        # (``x-up``, named by the backend's ``Connection``, is not checked: Twisted's client
        # keeps ``Connection`` to itself, so FLM cannot see what it lists.)
        for name in (b"keep-alive", b"set-cookie"):
            self.assertIsNone(response.header(name))
        self.assertNotEqual(response.header(b"server"), b"ollama")

    def test_request_id_echoed_forwarded_or_generated(self) -> None:
        self.request(http("POST", "/v1/chat/completions", CHAT,
                          headers={"X-Request-Id": "abc-123"}))
        self.assertEqual(self.backend.calls[0].headers.getRawHeaders(b"x-request-id"),
                         [b"abc-123"])
        self.backend.calls[0].respond(200, b"{}", headers={b"x-request-id": b"from-backend"})
        response = Response(self.send_and_value())
        self.assertEqual(response.headers[b"x-request-id"], [b"abc-123"])
        self.assertEqual(self.rows[-1][14], "abc-123")

        for given in (None, "has space", "x" * 201, "\u00e9"):
            extra = {} if given is None else {"X-Request-Id": given}
            self.request(http("POST", "/v1/chat/completions", CHAT, headers=extra))
            self.backend.calls[-1].respond(200, b"{}")
            generated = Response(self.send_and_value()).header(b"x-request-id")
            self.assertRegex(generated.decode(), r"^[0-9a-f]{32}$")
            self.assertEqual(self.backend.calls[-1].headers.getRawHeaders(b"x-request-id"),
                             [generated])

    def test_request_id_on_errors_too(self) -> None:
        response = self.request(http("POST", "/v1/chat/completions", CHAT, key="bad",
                                     headers={"X-Request-Id": "r-401"}))
        self.assertEqual(response.header(b"x-request-id"), b"r-401")
        response = self.request(http("POST", "/nope", CHAT, headers={"X-Request-Id": "r-404"}))
        self.assertEqual(response.header(b"x-request-id"), b"r-404")

    def test_server_timing(self) -> None:
        self.request(http("POST", "/v1/chat/completions", CHAT))
        self.clock.advance(0.25)
        self.backend.calls[0].respond(200, b"{}")
        timing = Response(self.send_and_value()).header(b"server-timing")
        m = re.match(rb"^queue;dur=([\d.]+), upstream;dur=([\d.]+), flm;dur=([\d.]+)$", timing)
        self.assertIsNotNone(m, timing)
        self.assertEqual(float(m.group(2)), 250.0)


class ForwardTests(ProxyTestCase):
    def test_non_streaming_answer_and_its_log_row(self) -> None:
        protocol, transport = self.send(http("POST", "/v1/chat/completions", CHAT,
                                             headers={"X-Request-Id": "r1"}))
        self.clock.advance(0.5)
        answer = json.dumps({"id": "c1", "choices": [{"message": {"content": "hello"}}],
                             "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                       "total_tokens": 18}}).encode()
        self.backend.calls[0].respond(200, answer)
        response = Response(transport.value())
        self.assertEqual((response.status, response.body), (200, answer))
        self.assertEqual(response.header(b"content-length"), b"%d" % len(answer))
        row = self.row()
        self.assertEqual((row["api_id"], row["method"], row["path"], row["status"], row["model"],
                          row["prompt_tokens"], row["completion_tokens"], row["request_id"],
                          row["error"], row["bytes_in"], row["bytes_out"]),
                         (1, "POST", "/v1/chat/completions", 200, "llama3.2", 11, 7, "r1", None,
                          len(CHAT), len(answer)))
        self.assertEqual(row["created_at"], T0)
        self.assertEqual((row["queue_ms"], row["ttfb_ms"], row["upstream_ms"],
                          row["response_ms"]), (0.0, 500.0, 500.0, 500.0))

    def test_ollama_token_counts(self) -> None:
        lines = [b'{"message":{"content":"a"},"done":false}\n',
                 b'{"message":{"content":"b"},"done":false}\n',
                 b'{"done":true,"prompt_eval_count":21,"eval_count":2}\n']
        protocol, transport = self.send(http("POST", "/api/chat", b'{"messages": []}'))
        self.backend.calls[0].respond(200, lines, headers={b"content-type": b"application/x-ndjson"})
        response = Response(transport.value())
        self.assertEqual(response.body, b"".join(lines))
        self.assertEqual((self.row()["prompt_tokens"], self.row()["completion_tokens"]), (21, 2))

    def test_streaming_chunks_reach_the_client_as_they_come(self) -> None:
        protocol, transport = self.send(http("POST", "/api/generate", b'{"prompt": "x"}'))
        upstream = self.backend.calls[0].respond(
            200, [], headers={b"content-type": b"application/x-ndjson"}, end=False)
        seen = []
        for i in range(3):
            self.clock.advance(1)
            upstream.send(b'{"response":"%d"}\n' % i)
            seen.append(transport.value())
        self.assertTrue(seen[0].endswith(b'{"response":"0"}\n\r\n'))
        self.assertTrue(seen[2].endswith(b'{"response":"2"}\n\r\n'))
        self.assertTrue(all(len(a) < len(b) for a, b in zip(seen, seen[1:])))
        upstream.end()
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(self.row()["ttfb_ms"], 1000.0)
        self.assertEqual(self.row()["upstream_ms"], 3000.0)

    def test_a_slow_client_slows_the_upstream(self) -> None:
        protocol, transport = self.send(http("POST", "/api/generate", b"{}"))
        upstream = self.backend.calls[0].respond(200, [b'{"response":"a"}\n'], end=False)
        protocol.pauseProducing()  # the client's socket buffer is full
        self.assertTrue(upstream.transport.paused)
        before = transport.value()
        upstream.send(b'{"response":"b"}\n')
        self.assertEqual(transport.value(), before)  # held back on the backend connection
        protocol.resumeProducing()
        self.assertFalse(upstream.transport.paused)
        self.backend.flush()
        self.assertIn(b'{"response":"b"}', transport.value())
        upstream.end()

    def test_backend_error_status_passes_through(self) -> None:
        response = self.request(http("POST", "/api/chat", b"{}"),
                                (404, b'{"error":"model not found"}'))
        self.assertEqual((response.status, response.json), (404, {"error": "model not found"}))
        self.assertEqual(self.row()["status"], 404)

    # Cancelling a real Agent request gives ``ResponseNeverReceived([CancelledError])``,
    # not ``CancelledError``: the exchange checks ``request.gone`` (it was taken for
    # "backend_unavailable", finishing a request whose client was gone; now fixed).
    def test_client_hang_up_cancels_the_upstream(self) -> None:
        protocol, transport = self.send(http("POST", "/v1/chat/completions", CHAT))
        call = self.backend.calls[0]
        protocol.connectionLost(Failure(ConnectionRefusedError("gone")))
        self.assertTrue(call.cancelled)
        self.assertEqual(self.row()["error"], "client_closed")
        self.assertEqual((self.runtime.gate.in_use, self.upstream.gate.in_use), (0, 0))
        self.assertEqual(self.runtime.in_flight, 0)

    def test_client_hang_up_mid_stream_stops_the_body(self) -> None:
        protocol, transport = self.send(http("POST", "/api/generate", b"{}"))
        upstream = self.backend.calls[0].respond(200, [b'{"response":"a"}\n'], end=False)
        protocol.connectionLost(Failure(ConnectionRefusedError("gone")))
        self.assertTrue(upstream.transport.stopped)
        self.assertEqual(self.row()["error"], "client_closed")
        self.assertEqual((self.runtime.gate.in_use, self.upstream.gate.in_use), (0, 0))


SSE_CHUNKS = [
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,'
    b'"total_tokens":11}}\n\n',
    b"data: [DONE]\n\n",
]


class UsageTests(ProxyTestCase):
    def stream(self, payload: dict[str, Any], chunks: list[bytes]) -> Response:
        protocol, transport = self.send(http("POST", "/v1/chat/completions",
                                             json.dumps(payload).encode()))
        self.backend.calls[0].respond(200, chunks,
                                    headers={b"content-type": b"text/event-stream"})
        return Response(transport.value())

    def test_usage_chunk_held_back_when_the_client_did_not_ask(self) -> None:
        response = self.stream({"messages": [], "stream": True}, SSE_CHUNKS)
        self.assertEqual(self.backend.calls[0].json["stream_options"], {"include_usage": True})
        self.assertEqual(response.body, SSE_CHUNKS[0] + SSE_CHUNKS[1] + SSE_CHUNKS[3])
        self.assertEqual((self.row()["prompt_tokens"], self.row()["completion_tokens"]), (9, 2))
        self.assertEqual(self.row()["bytes_out"], len(response.body))

    def test_usage_asked_for_in_a_body_that_names_the_apis_model(self) -> None:
        """The option is spliced into the client's bytes (no re-encoding)."""
        response = self.stream({"model": "llama3.2", "messages": [{"role": "user", "content": "x"}],
                                "stream": True}, SSE_CHUNKS)
        self.assertEqual(self.backend.calls[0].json,
                         {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}],
                          "stream": True, "stream_options": {"include_usage": True}})
        self.assertEqual(response.body, SSE_CHUNKS[0] + SSE_CHUNKS[1] + SSE_CHUNKS[3])

    def test_usage_held_back_however_the_stream_is_split(self) -> None:
        whole = b"".join(SSE_CHUNKS)
        for size in (1, 7, 50):
            self.backend.calls.clear()
            pieces = [whole[i:i + size] for i in range(0, len(whole), size)]
            response = self.stream({"messages": [], "stream": True,
                                    "stream_options": {"include_usage": False}}, pieces)
            self.assertEqual(response.body, SSE_CHUNKS[0] + SSE_CHUNKS[1] + SSE_CHUNKS[3])
            self.assertEqual(self.row()["completion_tokens"], 2)

    def test_usage_chunk_kept_when_the_client_asked(self) -> None:
        payload = {"messages": [], "stream": True, "stream_options": {"include_usage": True}}
        response = self.stream(payload, SSE_CHUNKS)
        self.assertEqual(self.backend.calls[0].json["stream_options"], {"include_usage": True})
        self.assertEqual(response.body, b"".join(SSE_CHUNKS))
        self.assertEqual((self.row()["prompt_tokens"], self.row()["completion_tokens"]), (9, 2))

    def test_non_streaming_request_is_not_touched(self) -> None:
        self.request(http("POST", "/v1/chat/completions", b'{"messages": []}'))
        self.assertNotIn("stream_options", self.backend.calls[0].json)


class FailureTests(ProxyTestCase):
    def test_502_on_connect_failure(self) -> None:
        self.backend.refuse = True
        response = self.request(http("POST", "/v1/chat/completions", CHAT))
        self.assert_error(response, 502, "backend_unavailable")
        self.assertEqual((self.row()["status"], self.row()["error"]),
                         (502, "backend_unavailable"))
        self.assertEqual((self.runtime.gate.in_use, self.upstream.gate.in_use), (0, 0))

    def test_504_when_the_backend_does_not_answer(self) -> None:
        protocol, transport = self.send(http("POST", "/v1/chat/completions", CHAT))
        self.clock.advance(29.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assert_error(Response(transport.value()), 504, "backend_timeout")
        self.assertEqual(self.row()["error"], "backend_timeout")
        self.assertEqual((self.runtime.gate.in_use, self.upstream.gate.in_use), (0, 0))

    def test_stalled_stream_is_cut_after_the_idle_timeout(self) -> None:
        protocol, transport = self.send(http("POST", "/v1/chat/completions",
                                             b'{"stream": true, "stream_options": '
                                             b'{"include_usage": true}}'))
        upstream = self.backend.calls[0].respond(
            200, [SSE_CHUNKS[0]], headers={b"content-type": b"text/event-stream"}, end=False)
        self.clock.advance(20)
        upstream.send(SSE_CHUNKS[1])
        self.clock.advance(20)  # 40 s in all, but never 30 s idle
        self.assertFalse(upstream.transport.stopped)
        self.clock.advance(10)
        self.assertTrue(upstream.transport.stopped)
        response = Response(transport.value())
        self.assertIn(b"event: error", response.body)
        self.assertEqual(self.row()["error"], "backend_timeout")

    def test_the_body_idle_timeout_counts_from_the_headers(self) -> None:
        """One timer serves both: the headers in time, then no gap as long in the body."""
        protocol, transport = self.send(http("POST", "/v1/chat/completions",
                                             b'{"stream": true, "stream_options": '
                                             b'{"include_usage": true}}'))
        self.clock.advance(20)
        upstream = self.backend.calls[0].respond(
            200, [], headers={b"content-type": b"text/event-stream"}, end=False)
        self.clock.advance(29.9)
        self.assertFalse(upstream.transport.stopped)
        self.clock.advance(0.2)
        self.assertTrue(upstream.transport.stopped)
        self.assertEqual(self.row()["error"], "backend_timeout")

    def test_no_timer_is_left_once_a_request_is_answered(self) -> None:
        self.request(http("POST", "/v1/chat/completions", CHAT), answer=(200, b"{}"))
        self.assertEqual((self.row()["status"], timers_of(self.clock)), (200, []))

    def test_no_timer_is_left_once_a_request_has_failed(self) -> None:
        self.backend.refuse = True
        self.request(http("POST", "/v1/chat/completions", CHAT))
        self.assertEqual((self.row()["status"], timers_of(self.clock)), (502, []))

    def test_429_queue_full_with_retry_after(self) -> None:
        self.send(http("POST", "/v1/chat/completions", CHAT))   # at the backend
        self.send(http("POST", "/v1/chat/completions", CHAT))   # queued (max_queue 1)
        response = self.request(http("POST", "/v1/chat/completions", CHAT))
        self.assert_error(response, 429, "queue_full")
        self.assertGreaterEqual(int(response.header(b"retry-after")), 1)
        self.assertEqual(len(self.backend.calls), 1)
        self.assertEqual(self.row()["error"], "queue_full")

    def test_503_queue_timeout(self) -> None:
        self.send(http("POST", "/v1/chat/completions", CHAT))
        protocol, transport = self.send(http("POST", "/v1/chat/completions", CHAT))
        self.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assert_error(Response(transport.value()), 503, "queue_timeout")
        self.assertEqual(self.runtime.gate.waiting, 0)
        self.assertEqual(len(self.backend.calls), 1)

    def test_queued_request_goes_when_the_first_finishes(self) -> None:
        first = self.send(http("POST", "/v1/chat/completions", CHAT))[1]
        second = self.send(http("POST", "/v1/chat/completions", CHAT))[1]
        self.clock.advance(2)
        self.backend.calls[0].respond(200, b"{}")
        self.assertEqual(Response(first.value()).status, 200)
        self.assertEqual(len(self.backend.calls), 2)
        self.backend.calls[1].respond(200, b"{}")
        self.assertEqual(Response(second.value()).status, 200)
        self.assertEqual(self.row()["queue_ms"], 2000.0)

    def test_client_leaving_the_queue_frees_its_place(self) -> None:
        self.send(http("POST", "/v1/chat/completions", CHAT))
        protocol, _ = self.send(http("POST", "/v1/chat/completions", CHAT))
        self.assertEqual(self.runtime.gate.waiting, 1)
        protocol.connectionLost(Failure(ConnectionRefusedError("gone")))
        self.assertEqual(self.runtime.gate.waiting, 0)
        self.send(http("POST", "/v1/chat/completions", CHAT))
        self.assertEqual(self.runtime.gate.waiting, 1)

    def test_rate_limited(self) -> None:
        self.patch(rate_limit_rpm=2, max_queue=10, max_concurrent=10)
        for _ in range(2):
            self.send(http("POST", "/v1/chat/completions", CHAT))
        response = self.request(http("POST", "/v1/chat/completions", CHAT))
        self.assert_error(response, 429, "rate_limited")
        self.assertEqual(response.header(b"retry-after"), b"30")
        self.assertEqual(len(self.backend.calls), 2)

    def test_lowered_limit_applies_to_a_running_api(self) -> None:
        self.patch(max_concurrent=2, max_queue=5)
        self.send(http("POST", "/v1/chat/completions", CHAT))
        self.send(http("POST", "/v1/chat/completions", CHAT))
        self.assertEqual(len(self.backend.calls), 2)
        self.patch(max_concurrent=1, max_queue=5)
        third = self.send(http("POST", "/v1/chat/completions", CHAT))[1]
        self.assertEqual(len(self.backend.calls), 2)
        self.backend.calls[0].respond(200, b"{}")
        self.assertEqual(len(self.backend.calls), 2)  # still 1 in use: at the new limit
        self.backend.calls[1].respond(200, b"{}")
        self.assertEqual(len(self.backend.calls), 3)
        self.backend.calls[2].respond(200, b"{}")
        self.assertEqual(Response(third.value()).status, 200)


def timers_of(clock: Any) -> list[Any]:
    """The relay's timers still pending on ``clock``."""
    return [c for c in clock.getDelayedCalls()
            if getattr(c.func, "__name__", "") in ("_expire", "_stalled")]


class UsageFromTailTests(SynchronousTestCase):
    """Token counts from the end of a body: the last count of either spelling wins."""

    def test_openai_and_ollama_spellings(self) -> None:
        self.assertEqual(usage_from_tail(b'{"usage":{"prompt_tokens":12,"completion_tokens":34}}'),
                         (12, 34))
        self.assertEqual(usage_from_tail(b'{"prompt_eval_count":9,"eval_count" : 11}'), (9, 11))
        self.assertEqual(usage_from_tail(b"no usage here"), (None, None))

    def test_the_last_usage_wins_across_spellings(self) -> None:
        tail = (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
                b'{"prompt_eval_count":5,"eval_count":7}')
        self.assertEqual(usage_from_tail(tail), (5, 7))

    def test_a_name_without_a_number_after_it_is_passed_over(self) -> None:
        tail = b'{"prompt_tokens":3,"completion_tokens":4,"fields":["prompt_tokens"]}'
        self.assertEqual(usage_from_tail(tail), (3, 4))
