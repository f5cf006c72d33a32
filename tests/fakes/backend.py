"""A fake model server that speaks Ollama's and OpenAI's HTTP APIs at once.

In-process: ``make_site(FakeState())`` or ``FakeBackend().start()`` (real reactor, port 0).
As a subprocess: ``python -m tests.fakes.backend --port 0`` prints
``FAKE listening on 127.0.0.1:<port>`` and runs until SIGTERM.

Behaviour is chosen per request by header, or for every request by ``POST /_fake/config``
(a JSON object merged into :data:`DEFAULT_CONFIG`; its optional ``"paths"`` list limits the
global ``delay``/``fail`` to those paths, so health probes of ``/api/tags`` stay healthy):

- ``X-Fake-Delay: S`` — seconds before the response headers;
- ``X-Fake-Chunks: N`` (default 3) and ``X-Fake-Interval: S`` (default 0) — the content
  chunks of a stream (and the words of a non-streaming answer), and the time between them;
- ``X-Fake-Fail``: ``status:NNN``, ``garbage``, ``reset``, ``stall``, ``stall_midstream``,
  ``die_midstream``.

``GET /_fake/stats`` counts what the fake saw (``/_fake/*`` itself is never counted),
``POST /_fake/reset`` restores config, stats and the model list,
``POST /_fake/models {"models": [...]}`` replaces the model list.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import select
import struct
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

DEFAULT_MODELS = ("llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest")
DEFAULT_CONFIG: dict[str, Any] = {
    "delay": 0.0,
    "chunks": 3,
    "interval": 0.0,
    "fail": None,
    "pull_interval": 0.01,
    "paths": None,
}
WORDS = ("Hello", " from", " the", " fake", " model", ".")
EMBED_DIM = 8
PULL_LAYERS = (2_000_000, 7_000, 485)
PULL_STEPS = 4
DIE_AFTER = 0.05  # abortConnection drops unsent bytes: give the written chunks time to leave
FAILS = ("garbage", "reset", "stall", "stall_midstream", "die_midstream")


def normalize_model(name: str) -> str:
    """Ollama's name rule: a name without a tag means ``:latest``."""
    return name if ":" in name else f"{name}:latest"


def model_entry(name: str) -> dict[str, Any]:
    """One model in ``/api/tags`` shape."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    family = "nomic-bert" if "embed" in name else name.split(":")[0].rstrip("0123456789.")
    return {
        "name": name,
        "model": name,
        "modified_at": "2024-10-01T12:00:00.123456+02:00",
        "size": 1_000_000 + int(digest[:5], 16),
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "1.2B",
            "quantization_level": "Q8_0",
        },
    }


class FakeState:
    """Config, model list and counters shared by every request of one fake."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.config: dict[str, Any] = dict(DEFAULT_CONFIG)
        self.models: dict[str, dict[str, Any]] = {n: model_entry(n) for n in DEFAULT_MODELS}
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.aborted = 0
        self.by_path: dict[str, int] = {}
        self.last: dict[str, Any] | None = None
        self.last_by_path: dict[str, dict[str, Any]] = {}
        self._cache: dict[tuple[Any, ...], bytes] = {}

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "cancelled": self.cancelled,
            "aborted": self.aborted,
            "by_path": dict(self.by_path),
            "last": self.last,
            "last_by_path": dict(self.last_by_path),
        }

    def cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> bytes:
        """JSON bytes of ``build()``, computed once per key (the fast non-streaming path)."""
        body = self._cache.get(key)
        if body is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            body = self._cache[key] = dumps(build())
        return body


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def count_tokens(value: Any) -> int:
    """A rough word count of the text in a prompt, messages or content parts."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return count_tokens(value.get("content")) + count_tokens(value.get("text"))
    if isinstance(value, list):
        return sum(count_tokens(v) for v in value)
    return 0


def words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def embedding(text: Any) -> list[float]:
    digest = hashlib.sha256(repr(text).encode()).digest()
    return [b / 256.0 - 0.5 for b in digest[:EMBED_DIM]]  # exact in float32 too


def embed_inputs(value: Any) -> list[Any]:
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


class Reply:
    """What to send: a whole ``body``, or stream ``pieces`` then ``tail`` together."""

    def __init__(
        self,
        status: int = 200,
        content_type: bytes = b"application/json",
        body: bytes = b"",
        pieces: list[bytes] | None = None,
        tail: bytes = b"",
        interval: float = 0.0,
        on_tail: Callable[[], None] | None = None,
    ) -> None:
        self.on_tail = on_tail
        self.status = status
        self.content_type = content_type
        self.body = body
        self.pieces = pieces
        self.tail = tail
        self.interval = interval


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return dumps(obj) + b"\n"


def openai_error(status: int, message: str, code: str | None = None) -> Reply:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(status, body=dumps(body))


def ollama_error(status: int, message: str) -> Reply:
    return Reply(status, body=dumps({"error": message}))


# -- OpenAI ------------------------------------------------------------------------------


def openai_usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_text(state: FakeState, path: str, body: dict[str, Any], n: int, interval: float) -> Reply:
    """``/v1/chat/completions`` and ``/v1/completions``."""
    chat = path == "/v1/chat/completions"
    model = body.get("model")
    prompt = count_tokens(body.get("messages") if chat else body.get("prompt"))
    created = int(time.time())
    if not body.get("stream"):
        def build() -> dict[str, Any]:
            text = "".join(words(n))
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            return {
                "id": "chatcmpl-fake" if chat else "cmpl-fake",
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [choice],
                "usage": openai_usage(prompt, n),
            }

        return Reply(body=state.cached((path, model, n, prompt), build))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base: dict[str, Any] = {
        "id": "chatcmpl-fake-stream" if chat else "cmpl-fake-stream",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(i: int, word: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": None}
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if i == 0 else {}
            if word is not None:
                delta["content"] = word
            choice["delta"] = delta
        else:
            choice["text"] = word or ""
        if word is None:
            choice["finish_reason"] = "stop"
        return sse({**base, "choices": [choice]})

    pieces = [chunk(i, w) for i, w in enumerate(words(n))]
    tail = chunk(n, None)
    if include_usage:
        tail += sse({**base, "choices": [], "usage": openai_usage(prompt, n)})
    tail += b"data: [DONE]\n\n"
    return Reply(content_type=b"text/event-stream", pieces=pieces, tail=tail, interval=interval)


def openai_embeddings(body: dict[str, Any]) -> Reply:
    inputs = embed_inputs(body.get("input"))
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(inputs):
        vector: Any = embedding(text)
        if b64:
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    prompt = max(1, count_tokens(inputs))
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return Reply(body=dumps({"object": "list", "data": data, "model": body.get("model"), "usage": usage}))


def openai_models(state: FakeState) -> Reply:
    data = [
        {"id": name, "object": "model", "created": 1727784000, "owned_by": "library"}
        for name in state.models
    ]
    return Reply(body=dumps({"object": "list", "data": data}))


# -- Ollama ------------------------------------------------------------------------------


def ollama_done(model: Any, prompt: int, n: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "stop",
        "total_duration": 123_456_789,
        "load_duration": 1_234_567,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 2_345_678,
        "eval_count": n,
        "eval_duration": 98_765_432,
    }


def ollama_text(state: FakeState, path: str, body: dict[str, Any], n: int, interval: float) -> Reply:
    """``/api/chat`` and ``/api/generate``; NDJSON unless ``"stream": false``."""
    chat = path == "/api/chat"
    model = body.get("model")
    prompt = max(1, count_tokens(body.get("messages") if chat else body.get("prompt")))

    def content(text: str) -> dict[str, Any]:
        if chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    final_extra: dict[str, Any] = {} if chat else {"context": [1, 2, 3]}
    if body.get("stream", True) is False:
        def build() -> dict[str, Any]:
            head = {"model": model, "created_at": now_iso(), **content("".join(words(n)))}
            return {**head, **ollama_done(model, prompt, n), **final_extra}

        return Reply(body=state.cached((path, model, n, prompt), build))
    created = now_iso()
    pieces = [
        ndjson({"model": model, "created_at": created, **content(w), "done": False}) for w in words(n)
    ]
    tail = ndjson({"model": model, "created_at": created, **content(""), **ollama_done(model, prompt, n), **final_extra})
    return Reply(content_type=b"application/x-ndjson", pieces=pieces, tail=tail, interval=interval)


def ollama_embed(body: dict[str, Any]) -> Reply:
    inputs = embed_inputs(body.get("input"))
    return Reply(body=dumps({
        "model": body.get("model"),
        "embeddings": [embedding(t) for t in inputs],
        "total_duration": 14_143_917,
        "load_duration": 1_019_500,
        "prompt_eval_count": max(1, count_tokens(inputs)),
    }))


def ollama_show(state: FakeState, body: dict[str, Any]) -> Reply:
    name = str(body.get("model") or body.get("name") or "")
    entry = state.models.get(normalize_model(name))
    if entry is None:
        return ollama_error(404, f"model '{name}' not found")
    return Reply(body=dumps({
        "modelfile": f"FROM {name}\n",
        "parameters": "stop \"<|eot_id|>\"",
        "template": "{{ .Prompt }}",
        "details": entry["details"],
        "model_info": {"general.architecture": entry["details"]["family"]},
        "capabilities": ["embedding"] if "embed" in name else ["completion"],
        "modified_at": entry["modified_at"],
    }))


def ollama_delete(state: FakeState, body: dict[str, Any]) -> Reply:
    name = str(body.get("model") or body.get("name") or "")
    if state.models.pop(normalize_model(name), None) is None:
        return ollama_error(404, f"model '{name}' not found")
    return Reply(body=b"")


def ollama_pull(state: FakeState, body: dict[str, Any]) -> Reply:
    name = str(body.get("model") or body.get("name") or "")
    interval = float(state.config.get("pull_interval") or 0.0)
    lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
    ok = bool(name) and "missing" not in name
    if ok:
        for i, total in enumerate(PULL_LAYERS):
            digest = hashlib.sha256(f"{name}/{i}".encode()).hexdigest()
            for step in range(PULL_STEPS + 1):
                lines.append({
                    "status": f"pulling {digest[:12]}",
                    "digest": f"sha256:{digest}",
                    "total": total,
                    "completed": total * step // PULL_STEPS,
                })
        lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
    final = {"status": "success"} if ok else {"error": "pull model manifest: file does not exist"}

    def on_done() -> None:
        if ok:
            state.models[normalize_model(name)] = model_entry(normalize_model(name))

    if body.get("stream", True) is False:
        if not ok:
            return ollama_error(500, final["error"])
        on_done()
        return Reply(body=dumps(final))
    return Reply(content_type=b"application/x-ndjson", pieces=[ndjson(x) for x in lines],
                 tail=ndjson(final), interval=interval, on_tail=on_done)


def ollama_tags(state: FakeState) -> Reply:
    return Reply(body=dumps({"models": list(state.models.values())}))


# -- dispatch ----------------------------------------------------------------------------

TEXT_PATHS = {"/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"}


def route(state: FakeState, method: str, path: str, body: Any, n: int, interval: float) -> Reply:
    """The reply to one model-server request (after any delay, without failures)."""
    openai = path.startswith("/v1/")
    posts = TEXT_PATHS | {"/v1/embeddings", "/api/embed", "/api/embeddings", "/api/show", "/api/pull"}
    if path in posts or path == "/api/delete":
        wanted = "DELETE" if path == "/api/delete" else "POST"
        if method != wanted:
            return openai_error(405, "method not allowed") if openai else ollama_error(405, "method not allowed")
        if not isinstance(body, dict):
            if openai:
                return openai_error(400, "We could not parse the JSON body of your request.")
            return ollama_error(400, "invalid character in JSON body")
    if path in TEXT_PATHS:
        return (openai_text if openai else ollama_text)(state, path, body, n, interval)
    handlers: dict[tuple[str, str], Callable[[], Reply]] = {
        ("GET", "/v1/models"): lambda: openai_models(state),
        ("POST", "/v1/embeddings"): lambda: openai_embeddings(body),
        ("GET", "/api/tags"): lambda: ollama_tags(state),
        ("GET", "/api/ps"): lambda: Reply(body=b'{"models":[]}'),
        ("GET", "/api/version"): lambda: Reply(body=b'{"version":"0.6.0"}'),
        ("POST", "/api/embed"): lambda: ollama_embed(body),
        ("POST", "/api/embeddings"): lambda: Reply(body=dumps({"embedding": embedding(body.get("prompt"))})),
        ("POST", "/api/show"): lambda: ollama_show(state, body),
        ("DELETE", "/api/delete"): lambda: ollama_delete(state, body),
        ("POST", "/api/pull"): lambda: ollama_pull(state, body),
    }
    handler = handlers.get((method, path))
    if handler is not None:
        return handler()
    if path == "/" and method in ("GET", "HEAD"):
        return Reply(content_type=b"text/plain; charset=utf-8", body=b"Ollama is running")
    if openai:
        return openai_error(404, f"Invalid URL ({method} {path})", "not_found")
    return Reply(404, b"text/plain", b"404 page not found")


class Exchange:
    """One request to the fake: counts it, applies delay and failures, writes the reply."""

    def __init__(self, state: FakeState, clock: IReactorTime, request: Request) -> None:
        self.state = state
        self.clock = clock
        self.request = request
        self.path = request.path.decode("latin-1")
        self.method = request.method.decode("latin-1")
        self.pending: IDelayedCall | None = None
        self.finished = False
        self.self_aborted = False
        self.die = False

    def header(self, name: bytes) -> str | None:
        value = self.request.getHeader(name)
        return value.decode("latin-1") if isinstance(value, bytes) else value

    def setting(self, header: bytes, key: str, applies: bool) -> Any:
        value = self.header(header)
        if value is not None:
            return value
        if key in ("delay", "fail") and not applies:
            return DEFAULT_CONFIG[key]
        return self.state.config.get(key, DEFAULT_CONFIG[key])

    def begin(self) -> None:
        state = self.state
        raw = self.request.content.read() if self.request.content is not None else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {
            k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
            for k, v in self.request.requestHeaders.getAllRawHeaders()
        }
        record = {"method": self.method, "path": self.path, "headers": headers, "json": body}
        state.requests += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        state.by_path[self.path] = state.by_path.get(self.path, 0) + 1
        state.last = state.last_by_path[self.path] = record
        self.request.notifyFinish().addBoth(self.ended)

        paths = state.config.get("paths")
        applies = paths is None or self.path in paths
        delay = float(self.setting(b"x-fake-delay", "delay", applies) or 0)
        n = max(0, int(self.setting(b"x-fake-chunks", "chunks", applies)))
        interval = float(self.setting(b"x-fake-interval", "interval", applies) or 0)
        fail = self.setting(b"x-fake-fail", "fail", applies) or None

        def respond() -> None:
            self.pending = None
            self.respond(fail, lambda: route(state, self.method, self.path, body, n, interval))

        if delay > 0:
            self.pending = self.clock.callLater(delay, respond)
        else:
            respond()

    def ended(self, result: Any) -> None:
        self.finished = True
        self.state.in_flight -= 1
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        if isinstance(result, Failure):
            if self.self_aborted:
                self.state.aborted += 1
            else:
                self.state.cancelled += 1

    def respond(self, fail: str | None, make: Callable[[], Reply]) -> None:
        if self.finished:
            return
        transport = self.request.channel.transport
        if fail is not None and fail.startswith("status:"):
            status = int(fail.split(":", 1)[1])
            message = f"fake failure {status}"
            self.send(openai_error(status, message) if self.path.startswith("/v1/") else ollama_error(status, message))
        elif fail == "garbage":
            self.self_aborted = True
            transport.write(b"\x00\x01 THIS IS NOT HTTP \xff\r\n\r\n")
            transport.loseConnection()
        elif fail == "reset":
            self.self_aborted = True
            transport.abortConnection()
        elif fail == "stall":
            return
        elif fail in ("stall_midstream", "die_midstream"):
            self.midstream(make(), die=fail == "die_midstream")
        elif fail is not None:
            self.send(ollama_error(400, f"unknown X-Fake-Fail {fail!r}; one of status:NNN, {', '.join(FAILS)}"))
        else:
            self.send(make())

    def start(self, reply: Reply) -> None:
        self.request.setResponseCode(reply.status)
        self.request.setHeader(b"content-type", reply.content_type)
        if reply.pieces is not None:
            self.request.setHeader(b"cache-control", b"no-cache")

    def send(self, reply: Reply) -> None:
        self.start(reply)
        if reply.pieces is None:
            self.request.setHeader(b"content-length", b"%d" % len(reply.body))
            if self.method != "HEAD":
                self.request.write(reply.body)
            self.request.finish()
            return
        self.stream(reply, 0, len(reply.pieces), finish=True)

    def stream(self, reply: Reply, i: int, stop: int, finish: bool) -> None:
        """Write pieces ``i``..``stop-1`` ``reply.interval`` apart, then the tail if ``finish``."""
        self.pending = None
        pieces = reply.pieces or []
        while not self.finished:
            if i < stop:
                self.request.write(pieces[i])
                i += 1
            if i >= stop:
                if finish:
                    if reply.on_tail is not None:
                        reply.on_tail()
                    if reply.tail:
                        self.request.write(reply.tail)
                    self.request.finish()
                else:
                    self.after_midstream()
                return
            if reply.interval > 0:
                self.pending = self.clock.callLater(reply.interval, self.stream, reply, i, stop, finish)
                return

    def midstream(self, reply: Reply, die: bool) -> None:
        self.die = die
        if reply.pieces is None:
            self.start(reply)
            self.request.setHeader(b"content-length", b"%d" % len(reply.body))
            self.request.write(reply.body[: len(reply.body) // 2])
            self.after_midstream()
            return
        self.start(reply)
        sent = max(1, len(reply.pieces) // 2) if reply.pieces else 0
        if sent == 0:
            self.request.write(b"")
            self.after_midstream()
            return
        self.stream(reply, 0, sent, finish=False)

    def after_midstream(self) -> None:
        """Stall (nothing more, ever) or die: abort once what was written has left."""
        if self.die:
            self.pending = self.clock.callLater(DIE_AFTER, self.abort)

    def abort(self) -> None:
        self.pending = None
        if not self.finished:
            self.self_aborted = True
            self.request.channel.transport.abortConnection()


class FakeResource(Resource):
    """The whole fake server: ``/_fake/*`` control, everything else a model server."""

    isLeaf = True

    def __init__(self, state: FakeState, clock: IReactorTime) -> None:
        super().__init__()
        self.state = state
        self.clock = clock

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("latin-1")
        if path.startswith("/_fake/"):
            return self.control(request, path)
        Exchange(self.state, self.clock, request).begin()
        return NOT_DONE_YET

    def control(self, request: Request, path: str) -> bytes:
        state = self.state
        request.setHeader(b"content-type", b"application/json")
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            request.setResponseCode(400)
            return b'{"error":"invalid json"}'
        method = request.method
        if path == "/_fake/stats":
            return dumps(state.stats())
        if path == "/_fake/config" and method == b"GET":
            return dumps(state.config)
        if path == "/_fake/config" and method == b"POST" and isinstance(body, dict):
            state.config.update(body)
            return dumps(state.config)
        if path == "/_fake/reset" and method == b"POST":
            state.reset()
            return b"{}"
        if path == "/_fake/models" and method == b"POST" and isinstance(body, dict):
            state.models = {normalize_model(n): model_entry(normalize_model(n)) for n in body.get("models", [])}
            return dumps(sorted(state.models))
        request.setResponseCode(404)
        return b'{"error":"no such fake control"}'


class QuietSite(Site):
    """A ``Site`` that writes no access log (it would cost time on the hot path)."""

    displayTracebacks = False

    def log(self, request: Request) -> None:
        pass


def make_site(state: FakeState | None = None, clock: IReactorTime | None = None) -> Site:
    """A ``Site`` serving the fake; ``clock`` defaults to the global reactor."""
    if clock is None:
        from twisted.internet import reactor as clock  # type: ignore[assignment]
    return QuietSite(FakeResource(state if state is not None else FakeState(), clock))


class FakeBackend:
    """The fake listening on a real port of the reactor (127.0.0.1, port 0 by default)."""

    def __init__(self, reactor: Any = None, port: int = 0, host: str = "127.0.0.1") -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.state = FakeState()
        self.host = host
        self.wanted_port = port
        self.listening: Any = None

    @property
    def port(self) -> int:
        return int(self.listening.getHost().port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> int:
        site = make_site(self.state, self.reactor)
        # listenTCP rather than an endpoint: synchronous, so the port is known at once.
        self.listening = self.reactor.listenTCP(self.wanted_port, site, interface=self.host)
        return self.port

    def stop(self) -> Any:
        """Stop listening; a Deferred that fires once the port is closed."""
        return self.listening.stopListening()


class FakeProcess:
    """The fake as a subprocess (``python -m tests.fakes.backend``), driven over HTTP."""

    def __init__(self, log_path: str | None = None) -> None:
        self.log_path = log_path
        self.proc: Any = None
        self.port = 0
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, port: int | None = None, timeout: float = 10.0) -> "FakeProcess":
        """Start on ``port`` (the last one used, else 0) and wait for its line."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        err = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.backend", "--port", str(port if port is not None else self.port)],
            stdout=subprocess.PIPE, stderr=err, env=env, cwd=root,
        )
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = self.proc.stdout.readline()
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"FAKE listening on "):
            self.stop()
            raise RuntimeError(f"the fake backend did not start: {line!r}")
        self.port = int(line.rsplit(b":", 1)[1])
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/_fake/stats")  # type: ignore[no-any-return]

    def configure(self, **config: Any) -> dict[str, Any]:
        return self.call("POST", "/_fake/config", config)  # type: ignore[no-any-return]

    def reset(self) -> None:
        self.call("POST", "/_fake/reset", {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    fake = FakeBackend(reactor, args.port, args.host)
    fake.start()
    print(f"FAKE listening on {args.host}:{fake.port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
