"""The Ollama adapter: /api/tags, /api/pull (NDJSON progress), /api/delete, /api/show."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from flm.backends.base import (
    OPENAI_PATHS,
    BackendError,
    BackendUnavailable,
    ModelNotFound,
    backend_base_url,
    bounded,
    parse_json,
    read_body,
    read_error,
    send,
    validate_model_name,
)

OLLAMA_PATHS = OPENAI_PATHS | {b"/api/chat", b"/api/generate", b"/api/embed"}
MAX_LINE = 1024 * 1024  # a progress line is ~200 bytes; anything this long is garbage


@attrs.define(eq=False)
class OllamaBackend:
    """Talks to an Ollama server at ``base_url`` through an injected treq client."""

    base_url: str = attrs.field(converter=lambda u: backend_base_url("ollama", u))
    _http: Any
    _clock: IReactorTime
    request_timeout_s: float = 10.0
    pull_idle_timeout_s: float = 120.0

    kind = "ollama"
    proxy_paths = OLLAMA_PATHS
    can_manage_models = True

    async def list_models(self) -> list[dict[str, Any]]:
        """``GET /api/tags``: name, model, size, modified_at, digest, details."""
        url = self.base_url + "/api/tags"
        payload = await bounded(self._call_json("GET", url), self._clock,
                                self.request_timeout_s, "GET /api/tags")
        models = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise BackendError("the backend's /api/tags answer has no model list")
        out = []
        for m in models:
            if isinstance(m, dict) and isinstance(m.get("name") or m.get("model"), str):
                out.append({**m, "name": m.get("name") or m["model"]})
        return out

    async def show(self, name: str) -> dict[str, Any]:
        """``POST /api/show``: the model's details, parameters, template..."""
        url = self.base_url + "/api/show"
        payload = await bounded(self._call_json("POST", url, json={"model": name}),
                                self._clock, self.request_timeout_s, "POST /api/show")
        if not isinstance(payload, dict):
            raise BackendError("the backend's /api/show answer is not an object")
        return payload

    async def delete(self, name: str) -> None:
        """``DELETE /api/delete``; 404 is :class:`ModelNotFound`."""
        url = self.base_url + "/api/delete"
        await bounded(self._call("DELETE", url, json={"model": name}),
                      self._clock, self.request_timeout_s, "DELETE /api/delete")

    async def pull(self, name: str, on_progress: Callable[[dict[str, Any]], None]) -> None:
        """``POST /api/pull``, calling ``on_progress`` with each NDJSON line as it arrives.

        No total time limit (downloads take minutes); the backend must send something
        every ``pull_idle_timeout_s`` seconds. An ``{"error": ...}`` line raises
        :class:`BackendError` with the backend's message.
        """
        validate_model_name(name)
        url = self.base_url + "/api/pull"
        request = send(self._http, "POST", url, json={"model": name, "stream": True},
                       unbuffered=True)  # never "insecure"
        response = await bounded(request, self._clock, self.pull_idle_timeout_s,
                                 "POST /api/pull")
        if response.code != 200:
            raise BackendError(await bounded(read_error(response, url), self._clock,
                                             self.request_timeout_s, "POST /api/pull"))
        reader = NDJSONReader(on_progress, self._clock, self.pull_idle_timeout_s)
        response.deliverBody(reader)
        await reader.done
        if not reader.succeeded:
            raise BackendError("the backend ended the pull without reporting success")

    async def _call(self, method: str, url: str, **kwargs: Any) -> bytes:
        """One request; 404 is :class:`ModelNotFound`, other errors :class:`BackendError`."""
        response = await send(self._http, method, url, **kwargs)
        if response.code == 404:
            raise ModelNotFound(await read_error(response, url))
        if response.code >= 400:
            raise BackendError(await read_error(response, url))
        return await read_body(response, url)

    async def _call_json(self, method: str, url: str, **kwargs: Any) -> Any:
        return parse_json(await self._call(method, url, **kwargs), url)


class NDJSONReader(Protocol):
    """Feeds each JSON line of a streamed body to ``on_line`` as soon as it is complete.

    ``done`` fires when the body ends; it fails with :class:`BackendError` on an
    ``{"error": ...}`` line or garbage, :class:`BackendUnavailable` on a lost
    connection or ``idle_s`` of silence. Cancelling ``done`` stops the download.
    """

    def __init__(self, on_line: Callable[[dict[str, Any]], None], clock: IReactorTime,
                 idle_s: float) -> None:
        self._on_line = on_line
        self._clock = clock
        self._idle_s = idle_s
        self._buf = b""
        self._timer: IDelayedCall | None = None
        self.succeeded = False
        self.done: Deferred[None] = Deferred(lambda _: self._stop())

    def connectionMade(self) -> None:
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._arm()
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        try:
            for line in lines:
                self._line(line)
            if len(self._buf) > MAX_LINE:
                raise BackendError("the backend sent an overlong progress line")
        except Exception as e:  # on_progress or the stream failed: stop reading
            self._finish(Failure(e))
            self._stop()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            try:
                self._line(self._buf)
            except Exception as e:
                self._finish(Failure(e))
                return
            self._finish(None)
        else:
            self._finish(Failure(BackendUnavailable(
                f"lost the connection to the backend during the pull: {reason.value}")))

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError):
            raise BackendError("the backend sent a progress line that is not JSON") from None
        if not isinstance(line, dict):
            raise BackendError("the backend sent a progress line that is not an object")
        if "error" in line:
            raise BackendError(str(line["error"]) or "the backend reported an error")
        if line.get("status") == "success":
            self.succeeded = True
        self._on_line(line)

    def _finish(self, result: Failure | None) -> None:
        self._disarm()
        if not self.done.called:
            if result is None:
                self.done.callback(None)
            else:
                self.done.errback(result)

    def _stop(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.stopProducing()

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_s)
        else:
            self._timer = self._clock.callLater(self._idle_s, self._idle)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle(self) -> None:
        self._timer = None
        self._finish(Failure(BackendUnavailable(
            f"the backend sent no pull progress for {self._idle_s:g} s")))
        self._stop()
