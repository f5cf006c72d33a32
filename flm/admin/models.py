"""``/api/models``: the model list, downloads with live progress, deletion.

The operations behind the admin app's ``/api/models`` subroute (``flm.admin.app``, which
checks the token and turns ``AdminError`` into the one error shape).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.iweb import IRequest

from flm.admin.errors import AdminError, json_body
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

MAX_BODY = 64 * 1024


class ModelsAdmin:
    """The model list, pulls and deletion; errors are raised as ``AdminError``."""

    heartbeat_s = 15.0

    def __init__(self, cache: ModelCache, pulls: PullJobs, backend: Backend,
                 in_use: Callable[[str], bool], clock: IReactorTime | None = None) -> None:
        self._cache = cache
        self._pulls = pulls
        self._backend = backend
        self._in_use = in_use
        self._clock = clock if clock is not None else pulls.clock
        #: With several backends: their lists merged, each model with ``backends``; pulls
        #: on one backend or every Ollama one (flm.admin.fleet_models.FleetPulls).
        self.merged: Callable[[], Any] | None = None
        self.fleet_pulls: Any = None

    # -- the model list --------------------------------------------------------------

    async def list_models(self, request: IRequest) -> bytes:
        if self.merged is not None:
            merged = await self.merged()
            if merged is not None:
                return json_body(request, 200, merged)
        try:
            listing = await self._cache.get()
        except BackendUnavailable as e:
            raise AdminError(502, "backend_unavailable", str(e))
        except BackendError as e:
            raise AdminError(502, "backend_error", e.message)
        return json_body(request, 200, {
            "models": listing.models, "fetched_at": iso(listing.fetched_at),
            "stale": listing.stale})

    async def refresh(self, request: IRequest) -> bytes:
        self._cache.expire()
        return await self.list_models(request)

    # -- pulls ------------------------------------------------------------------------

    def pull(self, request: IRequest) -> bytes:
        body = _json_object(request)
        unknown = sorted(set(body) - {"name", "backend"})
        if unknown:
            raise AdminError(422, "unknown_field", f"{unknown[0]}: unknown field")
        backend = body.get("backend")
        if backend is not None and not isinstance(backend, str):
            raise AdminError(422, "invalid_field", "backend: must be a backend's name")
        several = self.fleet_pulls is not None and (
            backend is not None or len(self.fleet_pulls.fleet.members) > 1)
        if not several:
            self._require_management("download")
        try:
            if several:
                started = self.fleet_pulls.start_on(body.get("name"), backend)
                state = {**started[0][1].state(), "backend": started[0][0],
                         "jobs": [{"backend": b, "job": j.id} for b, j in started]}
            else:
                state = self._pulls.start(body.get("name")).state()  # type: ignore[arg-type]
        except ValueError as e:
            raise AdminError(422, "invalid_field", str(e))
        except NotSupported as e:
            raise AdminError(501, "not_supported", str(e))
        except BackendUnavailable as e:
            raise AdminError(503, "unavailable", str(e))
        return json_body(request, 202, state)

    def pull_state(self, request: IRequest, job_id: str) -> bytes:
        return json_body(request, 200, self._job(job_id).state())

    def pull_events(self, request: IRequest, job_id: str) -> Deferred[None]:
        """Server-Sent Events: the current state, each change, the final state, end."""
        self._job(job_id)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = _EventStream(request, self._clock, self.heartbeat_s)
        stream.unsubscribe = (self.fleet_pulls or self._pulls).subscribe(job_id, stream.send)
        return stream.done

    # -- one model --------------------------------------------------------------------

    async def show(self, request: IRequest, name: str) -> bytes:
        self._require_management("describe")
        info = await self._call(self._backend.show(self._known_name(name)), name)
        return json_body(request, 200, info)

    async def delete(self, request: IRequest, name: str) -> bytes:
        backend, cache = self._backend, self._cache
        which = request.args.get(b"backend", [b""])[0].decode("utf-8", "replace")
        if which:  # ?backend=NAME: that backend's copy (default: the backend 'default')
            member = self.fleet_pulls.fleet.members.get(which) if self.fleet_pulls else None
            if member is None:
                raise AdminError(422, "invalid_field", f"backend: no backend named {which!r}")
            backend, cache = member.adapter, member.models
        self._require_management("delete", backend)
        self._known_name(name)
        force = request.args.get(b"force", [b""])[0].lower() in (b"true", b"1", b"yes")
        if not force and self._in_use(name):
            raise AdminError(409, "model_in_use", f"model {name!r} is used by a running API; "
                             "stop or change that API first, or pass ?force=true "
                             "(flm models rm --force)")
        # A client that hangs up must not cut the delete (and the cache expiry) short.
        await self._call(_shielded(Deferred.fromCoroutine(self._delete(name, backend, cache))),
                         name)
        request.setResponseCode(204)
        return b""

    async def _delete(self, name: str, backend: Any, cache: Any) -> None:
        try:
            await backend.delete(name)
        finally:
            cache.expire()
            if cache is not self._cache:
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

    def _require_management(self, what: str, backend: Any = None) -> None:
        backend = backend or self._backend
        if not backend.can_manage_models:
            kind = {"openai": "an OpenAI-compatible", "ollama": "an Ollama"}.get(
                backend.kind, f"a {backend.kind}")
            raise AdminError(501, "not_supported", f"{kind} backend cannot {what} models "
                             "through FLM; manage them on the model server")

    def _known_name(self, name: str) -> str:
        try:
            return validate_model_name(name)
        except ValueError:
            raise AdminError(404, "not_found", f"the backend has no model {name!r}")

    def _job(self, job_id: str) -> Any:
        job = (self.fleet_pulls or self._pulls).get(job_id)
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
