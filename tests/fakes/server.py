"""The fake model server itself: routing, delays and failures per request, the twisted.web site."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.fakes.ollama import (ollama_delete, ollama_embed, ollama_error, ollama_pull, ollama_show,
                                ollama_tags, ollama_text)
from tests.fakes.openai import openai_embeddings, openai_error, openai_models, openai_text
from tests.fakes.replies import Reply, dumps, embedding
from tests.fakes.state import DEFAULT_CONFIG, FakeState, normalize_model, model_entry

DIE_AFTER = 0.05  # abortConnection drops unsent bytes: give the written chunks time to leave
FAILS = ("garbage", "reset", "stall", "stall_midstream", "die_midstream")
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
