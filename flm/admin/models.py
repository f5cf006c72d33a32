"""``/api/models``: the model list, downloads with live progress, deletion.

A Klein sub-app with routes relative to its mount point; the main admin app checks the
token, then delegates with a branch route::

    @app.route("/api/models", branch=True, strict_slashes=False)
    def models(self, request):
        return self.models_admin.app.resource()
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from flm.admin.errors import AdminError, error, json_body
from flm.admin.validation import parse_json
from flm.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ModelNotFound,
    NotSupported,
    validate_model_name,
)
from flm.backends.catalog import ModelCache, iso
from flm.backends.pulls import PullJobs

log = Logger()
MAX_BODY = 64 * 1024


class _MountableResource(KleinResource):
    """Klein's resource, also answering ``/`` when mounted at a path without a slash
    (``/api/models`` leaves no path segment; Werkzeug would not match ``/``)."""

    def render(self, request: IRequest) -> Any:
        if not request.postpath:  # type: ignore[attr-defined]
            request.postpath = [b""]  # type: ignore[attr-defined]
        return super().render(request)


class _Klein(Klein):
    def resource(self) -> KleinResource:
        return _MountableResource(self)


class ModelsAdmin:
    """Routes for the model list, pulls and deletion; errors via :func:`error`."""

    app = _Klein()
    heartbeat_s = 15.0

    def __init__(self, cache: ModelCache, pulls: PullJobs, backend: Backend,
                 in_use: Callable[[str], bool], clock: IReactorTime | None = None) -> None:
        self._cache = cache
        self._pulls = pulls
        self._backend = backend
        self._in_use = in_use
        self._clock = clock if clock is not None else pulls.clock

    # -- errors ------------------------------------------------------------------

    @app.handle_errors(AdminError)
    def _admin_error(self, request: IRequest, failure: Failure) -> bytes:
        e = failure.value
        return error(request, e.status, e.code, e.message)

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return error(request, 404, "not_found", "no such path under /api/models")

    @app.handle_errors(MethodNotAllowed)
    def _bad_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = failure.value.valid_methods or []
        request.setHeader(b"allow", ", ".join(allowed).encode())
        return error(request, 405, "method_not_allowed", "that method is not allowed here")

    @app.handle_errors(Exception)
    def _internal(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("admin /api/models request failed", failure)
        return error(request, 500, "internal_error", "an internal error occurred; see the FLM log")

    # -- the model list --------------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def list_models(self, request: IRequest) -> bytes:
        try:
            listing = await self._cache.get()
        except BackendUnavailable as e:
            raise AdminError(502, "backend_unavailable", str(e))
        except BackendError as e:
            raise AdminError(502, "backend_error", e.message)
        return json_body(request, 200, {
            "models": listing.models, "fetched_at": iso(listing.fetched_at),
            "stale": listing.stale})

    @app.route("/refresh", methods=["POST"])
    async def refresh(self, request: IRequest) -> bytes:
        self._cache.expire()
        return await self.list_models(request)

    # -- pulls ------------------------------------------------------------------------

    @app.route("/pull", methods=["POST"])
    def pull(self, request: IRequest) -> bytes:
        self._require_management("download")
        body = _json_object(request)
        unknown = sorted(set(body) - {"name"})
        if unknown:
            raise AdminError(422, "unknown_field", f"{unknown[0]}: unknown field")
        try:
            job = self._pulls.start(body.get("name"))  # type: ignore[arg-type]
        except ValueError as e:
            raise AdminError(422, "invalid_field", str(e))
        except NotSupported as e:
            raise AdminError(501, "not_supported", str(e))
        except BackendUnavailable as e:
            raise AdminError(503, "unavailable", str(e))
        return json_body(request, 202, job.state())

    @app.route("/pulls/<job_id>", methods=["GET"])
    def pull_state(self, request: IRequest, job_id: str) -> bytes:
        return json_body(request, 200, self._job(job_id).state())

    @app.route("/pulls/<job_id>/events", methods=["GET"])
    def pull_events(self, request: IRequest, job_id: str) -> Deferred[None]:
        """Server-Sent Events: the current state, each change, the final state, end."""
        self._job(job_id)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = _EventStream(request, self._clock, self.heartbeat_s)
        stream.unsubscribe = self._pulls.subscribe(job_id, stream.send)
        return stream.done

    # -- one model --------------------------------------------------------------------

    @app.route("/<path:name>", methods=["GET"])
    async def show(self, request: IRequest, name: str) -> bytes:
        self._require_management("describe")
        info = await self._call(self._backend.show(self._known_name(name)), name)
        return json_body(request, 200, info)

    @app.route("/<path:name>", methods=["DELETE"])
    async def delete(self, request: IRequest, name: str) -> bytes:
        self._require_management("delete")
        self._known_name(name)
        force = request.args.get(b"force", [b""])[0].lower() in (b"true", b"1", b"yes")
        if not force and self._in_use(name):
            raise AdminError(409, "model_in_use", f"model {name!r} is used by a running API; "
                             "stop or change that API first, or pass ?force=true "
                             "(flm models rm --force)")
        # A client that hangs up must not cut the delete (and the cache expiry) short.
        await self._call(_shielded(Deferred.fromCoroutine(self._delete(name))), name)
        request.setResponseCode(204)
        return b""

    async def _delete(self, name: str) -> None:
        try:
            await self._backend.delete(name)
        finally:
            self._cache.expire()

    # -- helpers ------------------------------------------------------------------------

    async def _call(self, awaitable: Any, name: str) -> Any:
        try:
            return await awaitable
        except ModelNotFound:
            raise AdminError(404, "not_found", f"the backend has no model {name!r}")
        except NotSupported as e:
            raise AdminError(501, "not_supported", str(e))
        except BackendUnavailable as e:
            raise AdminError(502, "backend_unavailable", str(e))
        except BackendError as e:
            raise AdminError(502, "backend_error", e.message)

    def _require_management(self, what: str) -> None:
        if not self._backend.can_manage_models:
            kind = {"openai": "an OpenAI-compatible", "ollama": "an Ollama"}.get(
                self._backend.kind, f"a {self._backend.kind}")
            raise AdminError(501, "not_supported", f"{kind} backend cannot {what} models "
                             "through FLM; manage them on the model server")

    def _known_name(self, name: str) -> str:
        try:
            return validate_model_name(name)
        except ValueError:
            raise AdminError(404, "not_found", f"the backend has no model {name!r}")

    def _job(self, job_id: str) -> Any:
        job = self._pulls.get(job_id)
        if job is None:
            raise AdminError(404, "not_found", f"no pull job {job_id!r} (finished jobs are "
                             "kept for an hour)")
        return job


def _shielded(inner: Deferred[Any]) -> Deferred[Any]:
    """A Deferred that follows ``inner``; cancelling it leaves ``inner`` running."""
    outer: Deferred[Any] = Deferred()

    def relay(result: Any) -> None:
        if not outer.called:
            outer.callback(result)  # a Failure goes down the errback chain

    inner.addBoth(relay)
    return outer


def _json_object(request: IRequest) -> dict[str, Any]:
    raw = request.content.read(MAX_BODY + 1) if request.content else b""  # type: ignore[attr-defined]
    if len(raw) > MAX_BODY:
        raise AdminError(413, "request_too_large", "the request body is too large")
    return parse_json(raw)


class _EventStream:
    """Writes pull states as SSE ``data:`` events with ``: ping`` heartbeats; ``done``
    fires after the final state, and cancelling it (client gone) unsubscribes."""

    def __init__(self, request: IRequest, clock: IReactorTime, heartbeat_s: float) -> None:
        self._request = request
        self.unsubscribe: Callable[[], None] | None = None
        self.done: Deferred[None] = Deferred(lambda _: self.close())
        self._ping = LoopingCall(self._write, b": ping\n\n")
        self._ping.clock = clock
        self._ping.start(heartbeat_s, now=False)

    def send(self, state: dict[str, Any]) -> None:
        if self.done.called:
            return
        self._write(b"data: " + json.dumps(state, separators=(",", ":")).encode() + b"\n\n")
        if state["status"] != "running":
            self.close()
            self.done.callback(None)

    def close(self) -> None:
        # Called on the final state, or on cancel (client gone). A final state sent by
        # subscribe() itself arrives before unsubscribe is set: a finished job has none.
        if self._ping.running:
            self._ping.stop()
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None

    def _write(self, data: bytes) -> None:
        if not self.done.called:
            self._request.write(data)
