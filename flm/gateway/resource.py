"""One running API's request path: route, parse, admit, forward, relay, record."""

from __future__ import annotations

import json
from typing import Any, Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flm.backends.base import BackendError, BackendUnavailable, ModelNotFound
from flm.gateway import discovery
from flm.backends.health import BackendHealth
from flm.gateway.admission import (
    BackendGate,
    QueuedBytes,
    QueueTimeout,
    Refused,
    Ticket,
    admit,
    readmit,
)
from flm.gateway.fleet import Fleet, Member
from flm.gateway.errors import error_body
from flm.gateway.headers import copy_response_headers, upstream_headers
from flm.gateway.keys import refusal_headers
from flm.gateway.payload import ROUTES, BytesBody, rewrite
from flm.gateway.relay import Relay, UsageChunkFilter, usage_from_tail
from flm.gateway.request import check_key
from flm.gateway.timing import Timing

log = Logger()

DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024

def _timed_out(result: Any, timeout: float) -> Any:
    """Agent wraps a cancellation (``ResponseNeverReceived``...): still a timeout."""
    if isinstance(result, Failure):
        return Failure(TimeoutError(f"no answer in {timeout:g} s"))
    return result


@attrs.define
class Upstream:
    """What every API's resource shares: the backend, its gate, and where rows go."""

    agent: IAgent
    base_url: bytes
    paths: frozenset[bytes]
    gate: BackendGate
    clock: IReactorTime
    record: Callable[[tuple[Any, ...]], None]
    #: Request bytes waiting in every API's queue together (``max_queued_bytes``).
    queued: QueuedBytes = attrs.field(factory=lambda: QueuedBytes(DEFAULT_MAX_QUEUED_BYTES))
    #: The backend adapter, for the discovery calls (tags, show) answered on API ports.
    backend: Any = None
    #: Every backend by name; without one given, the one above as ``default``.
    fleet: Fleet | None = None
    #: Failover: at most this many more backends after the first (``max_retries``).
    max_retries: int = 2

    def __attrs_post_init__(self) -> None:
        if self.fleet is None:
            self.fleet = Fleet(self.clock)
            self.fleet.add(Member("default", getattr(self.backend, "kind", "ollama"),
                                  self.base_url, self.paths, self.gate,
                                  BackendHealth(self.clock), adapter=self.backend,
                                  max_concurrent=self.gate.limit))

            self._own_fleet = True

    _own_fleet: bool = False

    def members(self, config: Any) -> list[Member]:
        """The backends ``config`` may use. A fleet made of the one backend above follows
        what is set on this object later (tests change it in place)."""
        assert self.fleet is not None
        if self._own_fleet:
            member = self.fleet.members["default"]
            member.adapter, member.paths = self.backend, self.paths
            member.kind = getattr(self.backend, "kind", member.kind)
        return self.fleet.eligible(config)


#: Statuses that say "not this backend, not now": another one may serve the request.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class _Retry(Exception):
    """This attempt failed before the client had a byte; ``code`` is what to answer if no
    other backend may try."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Discard(Protocol):
    """Reads a response body nobody will see, so its connection goes back to the pool."""

    def dataReceived(self, data: bytes) -> None:
        pass


class _Done(Exception):
    """The response is already sent; carries the log row's status and error."""

    def __init__(self, status: int, error: str | None) -> None:
        self.status = status
        self.error = error


class ProxyResource(Resource):
    isLeaf = True

    def __init__(self, runtime: Any, upstream: Upstream) -> None:
        super().__init__()
        self.runtime = runtime
        self.up = upstream

    def render(self, request: Any) -> Any:
        d = Deferred.fromCoroutine(self._serve(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(self._crashed, request)
        return NOT_DONE_YET

    def _crashed(self, failure: Any, request: Any) -> None:
        if failure.check(CancelledError):
            return
        log.failure("proxy request failed", failure)
        if not request.gone and not request.finished:
            if not request.startedWriting:
                self._send_error(request, "backend_error", "Internal error in the gateway.")
            else:
                request.transport.abortConnection()

    def _send_error(self, request: Any, code: str, message: str,
                    retry_after: int | None = None, status: int | None = None) -> int:
        status, body = error_body(code, message, status)
        if retry_after is not None:
            request.setHeader(b"retry-after", b"%d" % retry_after)
        return self._send_bytes(request, status, body)

    @staticmethod
    def _send_bytes(request: Any, status: int, body: bytes,
                    content_type: bytes = b"application/json") -> int:
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
        return status

    async def _serve(self, request: Any) -> None:
        rt = self.runtime
        config = request.config
        if config is None:
            config = await rt.load_config()
            if config is None:
                self._send_error(request, "api_unavailable", "This API is not running.")
                return
        if request.key is None:
            request.key, refusal = check_key(rt, request)
            if refusal is not None:
                status, body, headers = refusal
                for name, value in headers.items():
                    request.setHeader(name, value)
                self._send_bytes(request, status, body)
                return
        rt.in_flight += 1
        timing = Timing(request.arrived, request.content.tell())
        try:
            status, error = await self._forward(request, config, timing)
        except _Done as done:
            status, error = done.status, done.error
        except CancelledError:
            # The client hung up: the status it was sent, or nginx's 499 if none was.
            status = request.code if request.startedWriting else 499
            error = "client_closed"
        finally:
            rt.in_flight -= 1
        now = self.up.clock.seconds()
        if request.gone and error is None:
            error = "client_closed"
        error = getattr(request, "cut_reason", None) or error  # cut by a stop: shutting_down
        key = request.key
        if getattr(request, "key_admitted", False) and key.id:
            # Charged when the request ends, from the backend's own usage numbers.
            rt.registry.keys.charge(key, (timing.prompt_tokens or 0)
                                    + (timing.completion_tokens or 0))
        self.up.record((
            config.id, request.arrived, request.method.decode("ascii", "replace"),
            request.path.decode("utf-8", "replace")[:200], status,
            timing.ms(timing.arrived, timing.admitted), timing.ms(timing.admitted, timing.first_byte),
            timing.ms(timing.admitted, timing.last_byte), (now - timing.arrived) * 1000.0,
            timing.bytes_in, timing.bytes_out, config.model, timing.prompt_tokens,
            timing.completion_tokens, request.request_id.decode("ascii"), error,
            key.id or None, key.name, getattr(request, "flm_backend", None),
            getattr(request, "flm_attempts", None)))

    def _fail(self, request: Any, code: str, message: str, retry_after: int | None = None,
              status: int | None = None) -> _Done:
        return _Done(self._send_error(request, code, message, retry_after, status), code)

    async def _forward(self, request: Any, config: Any, timing: "Timing") -> tuple[int, str | None]:
        path = request.path
        up = self.up
        assert up.fleet is not None
        members = up.members(config)
        if path == b"/v1/models" or path.startswith(discovery.MODELS_PREFIX) or (
                path in discovery.OLLAMA_DISCOVERY
                and any(m.kind == "ollama" for m in members)):
            return await self._discover(request, config, timing, members)
        members = [m for m in members if path in m.paths]
        route = ROUTES.get(path) if members or path in up.paths else None
        if route is None:
            raise self._fail(request, "not_found", f"No such path on this API: "
                             f"{path.decode('utf-8', 'replace')[:100]}")
        if request.method != b"POST":
            raise self._fail(request, "method_not_allowed", "Use POST for this path.")
        if not members:
            raise self._fail(request, "backend_unavailable",
                             "No enabled backend serves this API.")
        rt = self.runtime
        # The cheap refusals first: nothing of the body is parsed for a request refused.
        key = request.key
        try:
            rt.registry.keys.check(key)  # the key's own limits: nothing taken yet
            if rt.bucket is not None:
                rt.bucket.take()
            waits = rt.gate.check() or all(m.gate.busy for m in members)
        except Refused as r:
            rt.refused(r.code)
            for name, value in refusal_headers(r.code):
                request.setHeader(name, value)
            raise self._fail(request, r.code, r.message, r.retry_after) from None
        if waits and not up.queued.fits(timing.bytes_in):
            rt.refused("queue_full")
            raise self._fail(request, "queue_full", "Too many request bytes are waiting for "
                             "the backend; retry later.", 1, status=503)
        raw = request.content.getvalue()
        try:
            body, usage_filter = rewrite(raw, config.model, *route)
            pin = affinity_key(request, raw) if getattr(config, "affinity", None) else None
        except (ValueError, RecursionError) as e:
            # JSONDecodeError, huge integers, bad UTF-8, lone surrogates, NaN: all 400.
            raise self._fail(request, "invalid_json", f"Request body is not valid JSON: "
                             f"{str(e)[:200]}") from None
        del raw
        # Not refused: the request counts against its key from here on.
        for name, value in rt.registry.keys.admit(key):
            request.setHeader(name, value)
        request.key_admitted = True
        # While it waits, a request holds its rewritten bytes and nothing else.
        request.content.close()
        held = len(body) if waits else 0
        up.queued.take(held)
        timing.queued = up.clock.seconds()
        up.fleet.budget.deposit()
        order = up.fleet.order(up.fleet.candidates(members), pin)
        try:
            ticket = await self._admit(request, config, [m.gate for m in order])
        finally:
            up.queued.give(held)
        try:
            timing.admitted = up.clock.seconds()
            return await self._attempts(request, config, body, usage_filter, timing, ticket,
                                        pin)
        finally:
            ticket.release()

    async def _attempts(self, request: Any, config: Any, body: bytes,
                        usage_filter: UsageChunkFilter | None, timing: "Timing",
                        ticket: Ticket, pin: str | None) -> tuple[int, str | None]:
        """Failover: a failure before the client has a byte goes to another eligible
        backend, never the same one twice, at most ``max_retries`` more times, within
        ``queue_timeout_s`` and the retry budget."""
        fleet = self.up.fleet
        assert fleet is not None
        deadline = request.arrived + config.queue_timeout_s
        tried: list[Member] = []
        while True:
            assert ticket.backend is not None
            member = fleet.by_gate(ticket.backend)
            tried.append(member)
            member.requests += 1
            request.flm_backend = member.name
            request.flm_attempts = len(tried)
            request.setHeader(b"x-flm-backend", member.name.encode())
            request.setHeader(b"x-flm-attempts", b"%d" % len(tried))
            if pin is not None:
                fleet.pin(pin, member)
            others = [m for m in fleet.candidates(fleet.eligible(config, request.path))
                      if m not in tried]

            def may_retry(others: list[Member] = others) -> bool:
                return (bool(others) and len(tried) <= self.up.max_retries
                        and self.up.clock.seconds() < deadline)
            try:
                return await self._exchange(request, config, body, usage_filter, timing,
                                            member, may_retry)
            except _Retry as r:
                if not fleet.budget.withdraw():
                    raise self._fail(request, r.code, r.message) from None
                member.retries += 1
                log.info("backend {name} failed ({code}); trying another", name=member.name,
                         code=r.code)
            try:
                await readmit(ticket, [m.gate for m in fleet.order(others)], self.up.clock,
                              priority=config.priority, deadline=deadline)
            except QueueTimeout as e:
                raise self._fail(request, "queue_timeout", str(e)) from None

    async def _discover(self, request: Any, config: Any, timing: "Timing",
                        members: list[Member]) -> tuple[int, str | None]:
        """Discovery calls: answered for the API's model at once, never queued, by the
        first eligible backend that is up."""
        path = request.path
        fleet = self.up.fleet
        assert fleet is not None
        members = fleet.candidates(members)
        if path in discovery.OLLAMA_DISCOVERY:
            members = [m for m in members if m.kind == "ollama"]
        adapter = (members[0].adapter if members else None) or self.up.backend
        method = discovery.OLLAMA_DISCOVERY.get(path, b"GET")
        if request.method != method and not (method == b"GET" and request.method == b"HEAD"):
            raise self._fail(request, "method_not_allowed",
                             f"Use {method.decode()} for {path.decode('utf-8', 'replace')}.")
        if path == b"/api/version":
            timing.queued = timing.admitted = self.up.clock.seconds()
            if not members:
                raise self._fail(request, "backend_unavailable",
                                 "No enabled backend serves this API.")
            return await self._exchange(request, config, None, None, timing, members[0],
                                        lambda: False)
        try:
            if path == b"/v1/models":
                body: bytes | None = discovery.models_list(config.model)
            elif path == b"/api/tags":
                body = await discovery.tags(adapter, config.model)
            elif path == b"/api/show":
                body = await discovery.show(adapter, config.model,
                                            request.content.getvalue())
            else:
                body = discovery.model_by_id(config.model, path)
        except ModelNotFound as e:
            raise self._fail(request, "model_not_found", str(e)) from None
        except (ValueError, RecursionError) as e:
            raise self._fail(request, "invalid_json", f"Request body is not valid JSON: "
                             f"{str(e)[:200]}") from None
        except BackendUnavailable:
            raise self._fail(request, "backend_unavailable",
                             "The model backend cannot be reached.") from None
        except BackendError as e:
            raise self._fail(request, "backend_error", f"The backend failed: {e.message}"
                             ) from None
        if body is None:
            raise self._fail(request, "model_not_found",
                             f"This API serves {config.model!r} only.")
        timing.bytes_out = len(body)
        return self._send_bytes(request, 200, body), None

    async def _admit(self, request: Any, config: Any, gates: list[BackendGate]) -> Ticket:
        """Wait for the API's slot, then a backend's, within ``queue_timeout_s`` in all."""
        try:
            return await admit(self.runtime.gate, gates, self.up.clock,
                               priority=config.priority,
                               deadline=request.arrived + config.queue_timeout_s)
        except Refused as r:
            raise self._fail(request, r.code, r.message, r.retry_after) from None
        except QueueTimeout as e:
            raise self._fail(request, "queue_timeout", str(e)) from None

    async def _exchange(self, request: Any, config: Any, body: bytes | None,
                        usage_filter: UsageChunkFilter | None, timing: "Timing",
                        member: Member, may_retry: Callable[[], bool]
                        ) -> tuple[int, str | None]:
        """Send ``body`` (POST), or nothing (GET), to ``member`` and relay the answer;
        ``_Retry`` when it failed before anything reached the client and ``may_retry()``."""
        clock = self.up.clock
        timing.sent = clock.seconds()
        d = self.up.agent.request(b"GET" if body is None else b"POST",
                                  member.base_url + request.path,
                                  upstream_headers(request.requestHeaders, request.request_id),
                                  None if body is None else BytesBody(body))
        try:
            response = await d.addTimeout(config.upstream_timeout_s, clock, _timed_out)
        except TimeoutError:
            member.failures += 1
            member.health.request_failed("no answer in time")
            message = f"The backend did not answer in {config.upstream_timeout_s:g} s."
            if may_retry():
                raise _Retry("backend_timeout", message) from None
            raise self._fail(request, "backend_timeout", message) from None
        except CancelledError:
            raise
        except Exception as e:
            log.info("backend {name} unavailable: {e!r}", name=member.name, e=e)
            member.failures += 1
            member.health.request_failed(_reason(e))
            message = "The model backend cannot be reached."
            if may_retry():
                raise _Retry("backend_unavailable", message) from None
            raise self._fail(request, "backend_unavailable", message) from None
        if response.code >= 500:
            member.failures += 1
            member.health.request_failed(f"answered HTTP {response.code}")
        else:
            member.health.request_ok()
        if response.code in RETRY_STATUSES and may_retry():
            response.deliverBody(_Discard())
            raise _Retry("backend_unavailable",
                         f"The backends answered HTTP {response.code}.")
        headers_at = clock.seconds()
        request.setResponseCode(response.code, response.phrase)
        copy_response_headers(response.headers, request, keep_length=usage_filter is None)
        # FLM's own time is everything so far that was neither queueing nor the backend.
        queue = (timing.admitted - timing.queued) * 1000.0
        upstream = (headers_at - timing.sent) * 1000.0
        flm = (headers_at - timing.arrived) * 1000.0 - queue - upstream
        request.setHeader(b"server-timing", b"queue;dur=%.2f, upstream;dur=%.2f, flm;dur=%.2f"
                          % (queue, upstream, max(0.0, flm)))
        relay = Relay(request, clock, config.upstream_timeout_s, usage_filter)
        response.deliverBody(relay)
        error = None
        try:
            await relay.done
        except CancelledError:
            raise
        except Exception:
            error = "client_closed" if request.gone else (
                getattr(request, "cut_reason", None) or relay.error)
            if not request.gone:
                self._cut(request, error)
        finally:
            # Also for a client that hung up: the row says what it was sent.
            timing.first_byte = relay.first_byte_at
            timing.last_byte = clock.seconds()
            timing.bytes_out = relay.bytes_out
            timing.prompt_tokens, timing.completion_tokens = usage_from_tail(relay.tail)
        if not request.gone and not request.finished:
            request.finish()
        return response.code, error

    def _cut(self, request: Any, error: str | None) -> None:
        """The backend broke mid-body: end the client's response so it can tell."""
        content_type = request.responseHeaders.getRawHeaders(b"content-type", [b""])[0]
        if content_type.startswith(b"text/event-stream"):
            # An SSE client is told why, then the stream ends cleanly.
            message = CUT_MESSAGES.get(error or "", "The backend stopped mid-stream.")
            event = json.dumps({"error": {"message": message, "type": "server_error",
                                          "code": error}})
            request.write(b"event: error\ndata: " + event.encode() + b"\n\n")
        else:
            # Anything else is cut short, so the client cannot take it for complete.
            request.transport.abortConnection()
            request.gone = True


def affinity_key(request: Any, raw: bytes) -> str | None:
    """What keeps a user on one backend: ``X-Session-Id``, else the body's OpenAI ``user``."""
    session = request.requestHeaders.getRawHeaders(b"x-session-id")
    if session:
        return "s:" + session[0].decode("latin-1")[:200]
    payload = json.loads(raw)
    user = payload.get("user") if isinstance(payload, dict) else None
    return "u:" + user[:200] if isinstance(user, str) and user else None


def _reason(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return reasons[0].getErrorMessage()[:200]
    return (str(e) or type(e).__name__)[:200]


CUT_MESSAGES = {"shutting_down": "The gateway is shutting down; the stream was cut."}
