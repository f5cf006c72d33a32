"""Sending one attempt to one backend and relaying its answer to the client."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from flm.gateway.fleet import Member
from flm.gateway.headers import copy_response_headers, upstream_headers
from flm.gateway.payload import BytesBody
from flm.gateway.relay import Relay, UsageChunkFilter
from flm.gateway.timing import Timing
from flm.gateway.upstream import RETRY_STATUSES, Discard, Retry, reason

log = Logger()

CUT_MESSAGES = {"shutting_down": "The gateway is shutting down; the stream was cut."}


class Exchanging:
    """The part of :class:`flm.gateway.resource.ProxyResource` that talks to a backend."""

    up: Any

    def _fail(self, request: Any, code: str, message: str, retry_after: int | None = None,
              status: int | None = None) -> Exception:
        raise NotImplementedError

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
        relay = Relay(request, clock, config.upstream_timeout_s, usage_filter)
        relay.wait(d)  # one timer: the headers in time, then no gap longer in the body
        try:
            response = await d
        except Exception as e:
            expired = relay.expired
            if not expired:
                relay.cancel_wait()
                if isinstance(e, CancelledError):
                    raise
            if request.gone:  # the client hung up: the agent says so as a failure
                raise CancelledError() from e
            member.failures += 1
            if expired:
                member.health.request_failed("no answer in time")
                code = "backend_timeout"
                message = f"The backend did not answer in {config.upstream_timeout_s:g} s."
            else:
                log.info("backend {name} unavailable: {e!r}", name=member.name, e=e)
                member.health.request_failed(reason(e))
                code, message = "backend_unavailable", "The model backend cannot be reached."
            if may_retry():
                raise Retry(code, message) from None
            raise self._fail(request, code, message) from None
        if response.code >= 500:
            member.failures += 1
            member.health.request_failed(f"answered HTTP {response.code}")
        else:
            member.health.request_ok()
        if response.code in RETRY_STATUSES and may_retry():
            relay.cancel_wait()
            response.deliverBody(Discard())
            raise Retry("backend_unavailable",
                         f"The backends answered HTTP {response.code}.")
        headers_at = clock.seconds()
        request.setResponseCode(response.code, response.phrase)
        copy_response_headers(response.headers, request,
                              length=response.length if usage_filter is None else None)
        # FLM's own time is everything so far that was neither queueing nor the backend.
        queue = (timing.admitted - timing.queued) * 1000.0
        upstream = (headers_at - timing.sent) * 1000.0
        flm = (headers_at - timing.arrived) * 1000.0 - queue - upstream
        request.setHeader(b"server-timing", b"queue;dur=%.2f, upstream;dur=%.2f, flm;dur=%.2f"
                          % (queue, upstream, max(0.0, flm)))
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
            timing.prompt_tokens, timing.completion_tokens = relay.usage()
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


