"""One running API's request path: route, parse, admit, forward, relay, record."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flm.backends.base import BackendError, BackendUnavailable, ModelNotFound
from flm.gateway import discovery
from flm.gateway.admission import BackendGate, QueueTimeout, Refused, Ticket, admit, readmit
from flm.gateway.errors import error_body
from flm.gateway.exchange import CUT_MESSAGES, Exchanging
from flm.gateway.fleet import Member
from flm.gateway.keys import refusal_headers
from flm.gateway.payload import ROUTES, rewrite
from flm.gateway.relay import UsageChunkFilter
from flm.gateway.request import check_key
from flm.gateway.timing import Timing
from flm.gateway.upstream import DEFAULT_MAX_QUEUED_BYTES, Retry, Upstream, affinity_key

__all__ = ["CUT_MESSAGES", "DEFAULT_MAX_QUEUED_BYTES", "ProxyResource", "Upstream"]

log = Logger()


class _Done(Exception):
    """The response is already sent; carries the log row's status and error."""

    def __init__(self, status: int, error: str | None) -> None:
        self.status = status
        self.error = error


class ProxyResource(Exchanging, Resource):
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
            getattr(request, "flm_attempts", None), self.up.node))

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
            body, usage_filter, user = rewrite(raw, config.model, *route)
            pin = affinity_key(request, user) if getattr(config, "affinity", None) else None
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

            def may_retry() -> bool:
                # the budget last: withdrawn only for a retry that happens
                return (len(tried) <= self.up.max_retries
                        and self.up.clock.seconds() < deadline and bool(others())
                        and fleet.budget.withdraw())

            def others() -> list[Member]:
                return fleet.candidates([m for m in fleet.eligible(config, request.path)
                                         if m not in tried])
            try:
                return await self._exchange(request, config, body, usage_filter, timing,
                                            member, may_retry)
            except Retry as r:
                member.retries += 1
                log.info("backend {name} failed ({code}); trying another", name=member.name,
                         code=r.code)
            try:
                await readmit(ticket, [m.gate for m in fleet.order(others())], self.up.clock,
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
        if adapter is None and path in (b"/api/tags", b"/api/show"):
            raise self._fail(request, "backend_unavailable", "No enabled backend serves this API.")
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
