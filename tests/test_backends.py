"""Backend adapters over ``StubTreq`` and a fake Ollama / OpenAI server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flm.backends import (
    BackendError,
    BackendUnavailable,
    ModelNotFound,
    NotSupported,
    make_backend,
    validate_model_name,
)

DIGEST_A = "sha256:6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa"
DIGEST_B = "sha256:4fa551d4f938f68b8c1e6afa9d28befb70e3f33f75d0753248d530364aeea40f"

# A multi-layer pull as Ollama documents it (docs/api.md, "Pull a Model"): the first
# download line of a layer may lack "completed".
DOC_PULL = [
    {"status": "pulling manifest"},
    {"status": f"downloading {DIGEST_A}", "digest": DIGEST_A, "total": 2142590208},
    {"status": f"downloading {DIGEST_A}", "digest": DIGEST_A, "total": 2142590208,
     "completed": 241970},
    {"status": f"downloading {DIGEST_B}", "digest": DIGEST_B, "total": 12403,
     "completed": 12403},
    {"status": f"downloading {DIGEST_A}", "digest": DIGEST_A, "total": 2142590208,
     "completed": 2142590208},
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    {"status": "removing any unused layers"},
    {"status": "success"},
]
ERROR_LINE = {"error": "pull model manifest: file does not exist"}


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class FakeOllama(Resource):
    """Just enough of Ollama: tags, show, delete, and pulls the test writes to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.models = [{"name": "llama3.2:latest", "model": "llama3.2:latest",
                        "size": 2019393189, "modified_at": "2024-10-01T10:00:00Z",
                        "digest": "a80c4f17", "details": {"family": "llama"}}]
        self.seen: list[tuple[bytes, bytes, Any]] = []
        self.pulls: list[Any] = []
        self.hang = False
        self.pull_error: str | None = None

    def render(self, request: Any) -> Any:
        raw = request.content.read()
        body = json.loads(raw) if raw else None
        self.seen.append((request.method, request.path, body))
        if self.hang:
            return NOT_DONE_YET
        if request.path == b"/api/tags":
            return json.dumps({"models": self.models}).encode()
        if request.path == b"/api/pull" and self.pull_error:
            request.setResponseCode(400)
            return json.dumps({"error": self.pull_error}).encode()
        if request.path == b"/api/pull":
            request.setHeader(b"content-type", b"application/x-ndjson")
            self.pulls.append(request)
            return NOT_DONE_YET
        if request.path == b"/api/delete":
            names = [m["name"] for m in self.models]
            if body["model"] not in names:
                request.setResponseCode(404)
                return json.dumps({"error": f"model '{body['model']}' not found"}).encode()
            self.models = [m for m in self.models if m["name"] != body["model"]]
            return b""
        if request.path == b"/api/show":
            return json.dumps({"modelfile": "FROM x", "details": {"family": "llama"}}).encode()
        request.setResponseCode(500)
        return json.dumps({"error": "boom"}).encode()


class OllamaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fake = FakeOllama()
        self.stub = StubTreq(self.fake)
        self.clock = Clock()
        self.backend = make_backend("ollama", "http://ollama:11434/", self.stub, self.clock)

    def run_(self, coro: Any) -> Deferred:
        d = Deferred.fromCoroutine(coro)
        self.stub.flush()
        return d

    def test_paths_and_kind(self) -> None:
        assert self.backend.kind == "ollama"
        assert b"/api/chat" in self.backend.proxy_paths
        assert b"/v1/embeddings" in self.backend.proxy_paths

    def test_list_models_keeps_details(self) -> None:
        models = self.successResultOf(self.run_(self.backend.list_models()))
        assert models[0]["name"] == "llama3.2:latest"
        assert models[0]["size"] == 2019393189
        assert models[0]["details"] == {"family": "llama"}

    def test_list_models_times_out(self) -> None:
        self.fake.hang = True
        d = self.run_(self.backend.list_models())
        self.assertNoResult(d)
        self.clock.advance(10)
        self.failureResultOf(d, BackendUnavailable)

    def test_delete(self) -> None:
        self.successResultOf(self.run_(self.backend.delete("llama3.2:latest")))
        assert self.fake.seen[-1] == (b"DELETE", b"/api/delete", {"model": "llama3.2:latest"})
        assert self.fake.models == []
        f = self.failureResultOf(self.run_(self.backend.delete("nope:latest")), ModelNotFound)
        assert "not found" in str(f.value)

    def test_show(self) -> None:
        info = self.successResultOf(self.run_(self.backend.show("llama3.2")))
        assert info["details"] == {"family": "llama"}

    def start_pull(self, name: str = "llama3.2") -> tuple[Deferred, list[dict]]:
        seen: list[dict[str, Any]] = []
        d = self.run_(self.backend.pull(name, seen.append))
        return d, seen

    def test_pull_reads_lines_as_they_arrive(self) -> None:
        d, seen = self.start_pull()
        (req,) = self.fake.pulls
        assert self.fake.seen[-1][2] == {"model": "llama3.2", "stream": True}  # no "insecure"
        payload = ndjson(*DOC_PULL)
        cut = len(ndjson(*DOC_PULL[:2])) + 17  # the third line is split mid-way
        req.write(payload[:cut])
        self.stub.flush()
        assert seen == DOC_PULL[:2]
        req.write(payload[cut:])
        self.stub.flush()
        assert seen == DOC_PULL
        self.assertNoResult(d)
        req.finish()
        self.stub.flush()
        self.successResultOf(d)

    def test_pull_error_line(self) -> None:
        d, seen = self.start_pull("nosuchmodel")
        self.fake.pulls[0].write(ndjson({"status": "pulling manifest"}, ERROR_LINE))
        self.stub.flush()
        f = self.failureResultOf(d, BackendError)
        assert f.value.message == ERROR_LINE["error"]
        assert seen == [{"status": "pulling manifest"}]

    def test_pull_without_success_is_an_error(self) -> None:
        d, _ = self.start_pull()
        self.fake.pulls[0].write(ndjson(DOC_PULL[0]))
        self.fake.pulls[0].finish()
        self.stub.flush()
        self.failureResultOf(d, BackendError)

    def test_pull_idle_timeout(self) -> None:
        d, _ = self.start_pull()
        self.clock.advance(100)
        self.fake.pulls[0].write(ndjson(DOC_PULL[0]))
        self.stub.flush()
        self.clock.advance(100)  # 200 s in all, but never 120 s of silence
        self.assertNoResult(d)
        self.clock.advance(20)
        self.failureResultOf(d, BackendUnavailable)

    def test_pull_cancel_stops_the_download(self) -> None:
        d, _ = self.start_pull()
        req = self.fake.pulls[0]
        lost: list[Any] = []
        req.notifyFinish().addErrback(lost.append)
        d.cancel()
        self.stub.flush()
        self.failureResultOf(d, CancelledError)
        assert lost, "the backend connection was not closed"

    def test_pull_cancel_while_streaming(self) -> None:
        d, seen = self.start_pull()
        req = self.fake.pulls[0]
        lost: list[Any] = []
        req.notifyFinish().addErrback(lost.append)
        req.write(ndjson(*DOC_PULL[:2]))
        self.stub.flush()
        d.cancel()
        self.stub.flush()
        self.failureResultOf(d, CancelledError)
        assert lost and seen == DOC_PULL[:2]

    def test_pull_rejects_bad_name_before_sending(self) -> None:
        d, _ = self.start_pull("../etc/passwd")
        self.failureResultOf(d, ValueError)
        assert self.fake.pulls == []

    def test_pull_http_error_keeps_the_message(self) -> None:
        self.fake.pull_error = "invalid model name"
        d, _ = self.start_pull()
        f = self.failureResultOf(d, BackendError)
        assert f.value.message == "invalid model name"

    def test_other_http_error(self) -> None:
        self.fake.models = "not a list"  # type: ignore[assignment]
        self.failureResultOf(self.run_(self.backend.list_models()), BackendError)


class OpenAITests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Resource()
        v1 = Resource()
        root.putChild(b"v1", v1)
        models = Resource()
        models.render_GET = lambda request: json.dumps(  # type: ignore[attr-defined]
            {"object": "list", "data": [{"id": "qwen2.5-0.5b", "object": "model"}]}).encode()
        v1.putChild(b"models", models)
        self.stub = StubTreq(root)
        self.backend = make_backend("openai", "http://llama:8080/v1", self.stub, Clock())

    def test_list_models(self) -> None:
        d = Deferred.fromCoroutine(self.backend.list_models())
        self.stub.flush()
        assert self.successResultOf(d) == [
            {"id": "qwen2.5-0.5b", "object": "model", "name": "qwen2.5-0.5b"}]
        assert self.backend.proxy_paths == frozenset(
            {b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"})

    def test_cannot_manage(self) -> None:
        for coro in (self.backend.pull("x", print), self.backend.delete("x"),
                     self.backend.show("x")):
            f = self.failureResultOf(Deferred.fromCoroutine(coro), NotSupported)
            assert "OpenAI-compatible" in str(f.value)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="backend_kind"):
        make_backend("vllm", "http://x", None, Clock())


def test_unreachable_backend() -> None:
    from twisted.internet.defer import fail
    from twisted.internet.error import ConnectionRefusedError

    class Refusing:
        def request(self, *a: Any, **kw: Any) -> Deferred:
            return fail(ConnectionRefusedError("refused"))

    backend = make_backend("ollama", "http://127.0.0.1:1", Refusing(), Clock())
    d = Deferred.fromCoroutine(backend.list_models())
    f = SynchronousTestCase().failureResultOf(d, BackendUnavailable)
    assert "cannot reach the backend" in str(f.value)


@pytest.mark.parametrize("name", [
    "llama3.2", "llama3.2:latest", "qwen2.5:0.5b", "library/llama3:8b-instruct-q4_K_M",
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "user_1/my-model.v2:v1.0",
])
def test_valid_names(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", [
    "", None, 7, "a b", "../x", "x/../y", "a:b:c", "a/b/c/d", "hf.co/model", "x:", ":x",
    "a/", "/a", "x" * 129, "mod\nel", "mo;del", "a..b",
])
def test_invalid_names(name: Any) -> None:
    with pytest.raises(ValueError, match="^name: "):
        validate_model_name(name)


_part = st.from_regex(r"[a-z0-9_][a-z0-9_-]{0,20}", fullmatch=True)


@settings(derandomize=True, deadline=None)
@given(ns=st.none() | _part, model=_part, tag=st.none() | _part)
def test_grammar_accepts_composed_names(ns: str | None, model: str, tag: str | None) -> None:
    name = (f"{ns}/" if ns else "") + model + (f":{tag}" if tag else "")
    assert validate_model_name(name) == name


@settings(derandomize=True, deadline=None)
@given(st.text(max_size=200))
def test_grammar_never_crashes_and_rejects_unsafe(text: str) -> None:
    try:
        validate_model_name(text)
    except ValueError:
        return
    assert 0 < len(text) <= 128
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:")
    assert ".." not in text and not text.startswith(("/", ":", ".", "-"))
