"""Day-one defects of an API port (issue 9): SSE framing, wrong keys, reason phrases,
refusal order and queued memory, mid-stream failures, Ollama discovery, forwarded headers.

Same in-memory harness as ``tests/test_proxy.py``: raw bytes into the real ``ApiSite``,
a real Agent to a scripted model server, a ``task.Clock``.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from http import HTTPStatus
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flm.backends import ModelNotFound
from flm.backends.base import OPENAI_PATHS
from flm.gateway.relay import UsageChunkFilter
from flm.observe.metrics import Metrics
from flm.observe.minutes import Minute
from tests.test_logs_api import SyncStore, log_row
from tests.test_proxy import (
    CHAT,
    KEY,
    SSE_CHUNKS,
    ProxyTestCase,
    Response,
    api_config,
    http,
)

STREAM = json.dumps({"messages": [], "stream": True}).encode()


def status_line(raw: bytes) -> bytes:
    return raw.split(b"\r\n", 1)[0]


def reframe(chunks: list[bytes], eol: bytes) -> list[bytes]:
    return [c.replace(b"\n", eol) for c in chunks]


# 8. SSE framed with CRLF (or CR) is relayed event by event

class UsageFilterFramingTests(SynchronousTestCase):
    def test_every_framing_passes_each_event_at_once_and_hides_usage(self) -> None:
        for eol in (b"\n", b"\r\n", b"\r"):
            events = reframe(SSE_CHUNKS, eol)
            f = UsageChunkFilter()
            out = [f.feed(e) for e in events]
            self.assertEqual(out, [events[0], events[1], b"", events[3]], eol)
            self.assertEqual(f.flush(), b"")
            self.assertIn(b'"completion_tokens":2', f.usage)

    def test_split_anywhere_holds_at_most_the_event_under_way(self) -> None:
        for eol in (b"\n", b"\r\n", b"\r"):
            events = reframe(SSE_CHUNKS, eol)
            whole = b"".join(events)
            for size in (1, 3, 7):
                f = UsageChunkFilter()
                out = b""
                for i in range(0, len(whole), size):
                    out += f.feed(whole[i:i + size])
                    # Never more held than the current event and a possible CR.
                    self.assertLessEqual(len(f._pending), max(map(len, events)))
                out += f.flush()
                self.assertEqual(out, events[0] + events[1] + events[3], (eol, size))


class CrlfStreamTests(ProxyTestCase):
    def test_crlf_stream_reaches_the_client_before_it_ends_without_usage(self) -> None:
        events = reframe(SSE_CHUNKS, b"\r\n")
        protocol, transport = self.send(http("POST", "/v1/chat/completions", STREAM))
        upstream = self.backend.calls[0].respond(
            200, [events[0]], headers={b"content-type": b"text/event-stream"}, end=False)
        self.assertIn(b"Hel", transport.value())  # the first token, before the end
        for e in events[1:]:
            upstream.send(e)
        upstream.end()
        body = Response(transport.value()).body
        self.assertEqual(body, events[0] + events[1] + events[3])
        self.assertNotIn(b'"usage"', body)
        self.assertEqual(self.row()["completion_tokens"], 2)


# 9. A wrong key never makes a right key fail

class WrongKeyTests(ProxyTestCase):
    def test_right_key_works_after_many_wrong_ones_from_the_same_address(self) -> None:
        for _ in range(25):
            self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        self.request(http("POST", "/v1/chat/completions", CHAT))
        self.assertEqual(len(self.backend.calls), 1)
        wrong = self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        self.assert_error(wrong, 429, "rate_limited")
        self.assertGreaterEqual(int(wrong.header(b"retry-after")), 1)
        self.assertEqual(status_line(wrong.raw), b"HTTP/1.1 429 Too Many Requests")

    def test_throttling_is_per_api(self) -> None:
        for _ in range(25):
            self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        other = self.run_api(api_config(id=2, port=8081, name="other"))
        self.site = other.site
        response = self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        self.assert_error(response, 401, "invalid_api_key")

    def test_cold_cache_right_key_works_too(self) -> None:
        for _ in range(25):
            self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        config = self.registry.cache.by_port(8080)
        self.registry.cache.drop(config.id)

        async def load() -> Any:
            self.registry.cache.put(config)
            return config
        self.runtime.load_config = load  # type: ignore[method-assign]
        self.request(http("POST", "/v1/chat/completions", CHAT))
        self.assertEqual(len(self.backend.calls), 1)

    def test_wrong_keys_and_throttled_ones_are_counted_in_metrics(self) -> None:
        for _ in range(25):
            self.request(http("POST", "/v1/chat/completions", CHAT, key="flm-guess"))
        metrics = Metrics(SyncStore(), self.clock, registry=self.registry)
        from prometheus_client import generate_latest
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(
                       generate_latest(metrics.prometheus).decode()) for s in fam.samples}
        self.assertEqual(samples[("flm_refused_keys_total", (("api", "1"),))], 25)
        self.assertEqual(samples[("flm_refused_keys_throttled_total", (("api", "1"),))], 5)


# 10. Standard reason phrases

class ReasonPhraseTests(ProxyTestCase):
    def assert_phrase(self, response: Response, status: int) -> None:
        self.assertEqual(status_line(response.raw),
                         b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode()))

    def test_every_status_flm_sends_has_its_standard_phrase(self) -> None:
        self.assert_phrase(self.request(http("POST", "/v1/chat/completions", CHAT,
                                             key="bad")), 401)
        self.assert_phrase(self.request(http("POST", "/nope", CHAT)), 404)
        self.assert_phrase(self.request(http("GET", "/v1/chat/completions")), 405)
        self.assert_phrase(self.request(http("POST", "/v1/chat/completions", b"{")), 400)
        self.assert_phrase(self.request(http("POST", "/v1/chat/completions", b"x" * 5000)),
                           413)
        self.send(http("POST", "/v1/chat/completions", CHAT))
        self.send(http("POST", "/v1/chat/completions", CHAT))
        self.assert_phrase(self.request(http("POST", "/v1/chat/completions", CHAT)), 429)
        self.clock.advance(10.1)
        self.backend.calls[0].respond(200, b"{}")

    def test_backend_statuses_get_standard_phrases(self) -> None:
        for code in (429, 503, 422):
            self.backend.calls.clear()
            response = self.request(http("POST", "/v1/chat/completions", CHAT),
                                    (code, b'{"error": "busy"}'))
            self.assert_phrase(response, code)

    def test_rate_limited_429(self) -> None:
        self.patch(rate_limit_rpm=1, max_queue=10, max_concurrent=10)
        self.send(http("POST", "/v1/chat/completions", CHAT))
        self.assert_phrase(self.request(http("POST", "/v1/chat/completions", CHAT)), 429)


# 11. Cheap refusals first; only bytes while queued; queued bytes bounded

EMBED = json.dumps({"model": "x", "input": ["w%d" % i for i in range(40_000)]}).encode()


class RefusalOrderTests(ProxyTestCase):
    def test_queue_full_is_refused_before_the_body_is_parsed(self) -> None:
        self.send(http("POST", "/v1/chat/completions", CHAT))   # at the backend
        self.send(http("POST", "/v1/chat/completions", CHAT))   # queued (max_queue 1)
        response = self.request(http("POST", "/v1/chat/completions", b"{not json"))
        self.assert_error(response, 429, "queue_full")

    def test_rate_limit_is_refused_before_the_body_is_parsed(self) -> None:
        self.patch(rate_limit_rpm=1, max_queue=10, max_concurrent=10)
        self.send(http("POST", "/v1/chat/completions", CHAT))
        response = self.request(http("POST", "/v1/chat/completions", b"{not json"))
        self.assert_error(response, 429, "rate_limited")

    def test_invalid_json_is_still_400_before_queueing(self) -> None:
        self.send(http("POST", "/v1/chat/completions", CHAT))   # at the backend
        response = self.request(http("POST", "/v1/chat/completions", b"{not json"))
        self.assert_error(response, 400, "invalid_json")
        self.assertEqual(self.runtime.gate.waiting, 0)


class QueuedMemoryTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.site.max_body = 10 * 1024 * 1024

    def test_a_queued_request_holds_its_rewritten_bytes_only(self) -> None:
        self.send(http("POST", "/v1/embeddings", b"{}"))  # takes the only slot
        raw = http("POST", "/v1/embeddings", EMBED)
        # Earlier tests' garbage is frozen, so collecting ours finalizes nothing of theirs.
        gc.freeze()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            protocol, transport = self.send(raw)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
            gc.unfreeze()
        self.assertEqual(self.runtime.gate.waiting, 1)
        retained = sum(s.size_diff for s in after.compare_to(before, "filename"))
        # The parsed tree of 40,000 strings is several times the body; the body itself
        # (as received) is dropped: what stays is about one rewritten copy.
        self.assertLess(retained, 1.5 * len(EMBED), retained)
        request = protocol.requests[-1]
        self.assertEqual(request.content.getvalue(), b"")
        self.assertGreater(self.upstream.queued.used, 0.8 * len(EMBED))
        self.backend.calls[0].respond(200, b"{}")
        self.assertEqual(json.loads(self.backend.calls[1].body)["input"][-1], "w39999")
        self.assertEqual(self.row(-1)["bytes_in"], 2)
        self.backend.calls[1].respond(200, b"{}")
        self.assertEqual(self.row()["bytes_in"], len(EMBED))
        self.assertEqual(self.upstream.queued.used, 0)


class QueuedBytesTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.patch(max_queue=10)
        self.upstream.queued.limit = 3000

    def test_bytes_waiting_in_all_queues_are_bounded(self) -> None:
        body = json.dumps({"input": "x" * 1000}).encode()
        self.send(http("POST", "/v1/embeddings", body))          # at the backend: free
        self.send(http("POST", "/v1/embeddings", body))          # queued: ~1 KB
        self.send(http("POST", "/v1/embeddings", body))          # queued: ~2 KB
        self.assertEqual(self.runtime.gate.waiting, 2)
        self.assertGreater(self.upstream.queued.used, 2000)
        response = self.request(http("POST", "/v1/embeddings", body))
        self.assert_error(response, 503, "queue_full")
        self.assertEqual(response.header(b"retry-after"), b"1")
        self.assertEqual(self.runtime.gate.waiting, 2)
        self.backend.calls[0].respond(200, b"{}")   # one leaves the queue
        self.assertLess(self.upstream.queued.used, 2000)
        self.send(http("POST", "/v1/embeddings", body))
        self.assertEqual(self.runtime.gate.waiting, 2)
        for i in range(1, 4):   # let every request finish: nothing left for gc
            self.backend.calls[i].respond(200, b"{}")
        self.assertEqual(self.upstream.queued.used, 0)

    def test_a_request_that_does_not_wait_is_not_counted(self) -> None:
        big = json.dumps({"input": "x" * 3500}).encode()
        self.send(http("POST", "/v1/embeddings", big))
        self.assertEqual(len(self.backend.calls), 1)
        self.assertEqual(self.upstream.queued.used, 0)

    def test_leaving_the_queue_gives_the_bytes_back(self) -> None:
        body = json.dumps({"input": "x" * 1000}).encode()
        self.send(http("POST", "/v1/embeddings", body))
        protocol, _ = self.send(http("POST", "/v1/embeddings", body))
        self.assertGreater(self.upstream.queued.used, 1000)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.upstream.queued.used, 0)
        self.send(http("POST", "/v1/embeddings", body))
        self.clock.advance(11)   # queue_timeout
        self.assertEqual(self.upstream.queued.used, 0)


# 12. Mid-stream failures count as errors

class MidStreamFailureTests(SynchronousTestCase):
    def test_a_stream_cut_by_the_backend_counts_in_the_rollup(self) -> None:
        m = Minute()
        m.add(log_row(1, 0.0, 200))
        m.add(log_row(1, 0.0, 200, error="backend_disconnected"))
        m.add(log_row(1, 0.0, 200, error="backend_timeout"))
        m.add(log_row(1, 0.0, 200, error="client_closed"))
        m.add(log_row(1, 0.0, 502, error="backend_unavailable"))
        self.assertEqual((m.count, m.errors), (5, 3))

    def test_and_in_prometheus(self) -> None:
        from prometheus_client import generate_latest
        metrics = Metrics(SyncStore(), Clock())
        metrics.observe(log_row(3, 0.0, 200, error="backend_disconnected"))
        metrics.observe(log_row(3, 0.0, 503, error="queue_timeout"))
        metrics.observe(log_row(3, 0.0, 200, error="client_closed"))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(
                       generate_latest(metrics.prometheus).decode()) for s in fam.samples}
        self.assertEqual(samples[("flm_request_errors_total",
                                  (("api", "3"), ("kind", "cut")))], 1)
        self.assertEqual(samples[("flm_request_errors_total",
                                  (("api", "3"), ("kind", "status")))], 1)


class MidStreamRowTests(ProxyTestCase):
    def test_the_cut_stream_row_says_why(self) -> None:
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseFailed
        protocol, transport = self.send(http("POST", "/v1/chat/completions", STREAM))
        upstream = self.backend.calls[0].respond(
            200, [SSE_CHUNKS[0]], headers={b"content-type": b"text/event-stream"}, end=False)
        upstream.end(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertEqual((self.row()["status"], self.row()["error"]),
                         (200, "backend_disconnected"))
        m = Minute()
        m.add(self.rows[-1])
        self.assertEqual(m.errors, 1)


# 13. Ollama-native discovery and /v1/models/{id}

class FakeAdapter:
    kind = "ollama"

    def __init__(self) -> None:
        self.shown: list[str] = []

    async def list_models(self) -> list[dict[str, Any]]:
        return [{"name": n, "model": n, "size": 5, "digest": "d" + n,
                 "modified_at": "2024-10-01T12:00:00Z", "details": {"family": "llama"}}
                for n in ("llama3.2:latest", "qwen2.5:0.5b")]

    async def show(self, name: str) -> dict[str, Any]:
        self.shown.append(name)
        if not name.startswith("llama3.2"):
            raise ModelNotFound(f"model '{name}' not found")
        return {"modelfile": "FROM x", "details": {"family": "llama"}, "model_info": {}}


class DiscoveryTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.adapter = FakeAdapter()
        self.upstream.backend = self.adapter

    def test_v1_models_id(self) -> None:
        response = self.request(http("GET", "/v1/models/llama3.2"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json["id"], "llama3.2")
        self.assertEqual(response.json["object"], "model")
        self.assert_error(self.request(http("GET", "/v1/models/gpt-4o")), 404,
                          "model_not_found")

    def test_api_tags_lists_only_the_api_model(self) -> None:
        response = self.request(http("GET", "/api/tags"))
        self.assertEqual(response.status, 200, response.raw)
        models = response.json["models"]
        self.assertEqual([m["name"] for m in models], ["llama3.2:latest"])
        self.assertEqual(models[0]["details"], {"family": "llama"})

    def test_api_show_answers_for_the_api_model_only(self) -> None:
        response = self.request(http("POST", "/api/show", b'{"model": "llama3.2"}'))
        self.assertEqual((response.status, response.json["modelfile"]), (200, "FROM x"))
        self.assertEqual(self.adapter.shown, ["llama3.2"])
        self.assert_error(self.request(http("POST", "/api/show", b'{"model": "qwen2.5:0.5b"}')),
                          404, "model_not_found")
        self.assertEqual(self.adapter.shown, ["llama3.2"])
        self.assert_error(self.request(http("POST", "/api/show", b"{")), 400, "invalid_json")

    def test_api_version_is_the_backend_s(self) -> None:
        self.send(http("GET", "/api/version"))
        call = self.backend.calls[0]
        self.assertEqual((call.method, call.uri), (b"GET", b"http://backend:11434/api/version"))
        call.respond(200, b'{"version":"0.6.0"}')
        self.assertEqual(Response(self.send_and_value()).json, {"version": "0.6.0"})

    def test_not_with_an_openai_backend(self) -> None:
        self.adapter.kind = "openai"
        self.upstream.paths = OPENAI_PATHS
        for method, path in (("GET", "/api/tags"), ("GET", "/api/version"),
                             ("POST", "/api/show")):
            self.assert_error(self.request(http(method, path, b"{}")), 404, "not_found")
        self.assertEqual(self.request(http("GET", "/v1/models/llama3.2")).status, 200)


# 15. What reaches the backend

class ForwardedHeaderTests(ProxyTestCase):
    def test_no_key_header_is_forwarded(self) -> None:
        self.request(http("POST", "/v1/chat/completions", CHAT, key=None,
                          headers={"Authorization": f"Bearer {KEY}", "api-key": KEY,
                                   "X-Api-Key": KEY}))
        sent = self.backend.calls[0].headers
        self.assertIsNone(sent.getRawHeaders(b"api-key"))
        self.assertIsNone(sent.getRawHeaders(b"x-api-key"))
        self.assertNotIn(KEY.encode(), b"".join(v for _, vs in sent.getAllRawHeaders()
                                                for v in vs))

    def test_request_id_up_to_128_safe_characters(self) -> None:
        for given, kept in (("a" * 128, True), ("a" * 129, False),
                            ("req_01HZX-9f.2:ab/c+d=", True), ("a<script>", False),
                            ('a"b', False), ("a;b", False), ("a,b", False)):
            self.backend.calls.clear()
            self.request(http("POST", "/v1/chat/completions", CHAT,
                              headers={"X-Request-Id": given}), (200, b"{}"))
            sent = self.backend.calls[0].headers.getRawHeaders(b"x-request-id")[0]
            self.assertEqual(sent == given.encode(), kept, given)
            self.assertEqual(Response(self.send_and_value()).header(b"x-request-id"), sent)
