"""What every backend adapter offers, the errors it raises, and shared HTTP plumbing."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from treq.content import content
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IResponse

T = TypeVar("T")

#: Paths an API port may forward to any OpenAI-compatible backend.
OPENAI_PATHS: frozenset[bytes] = frozenset(
    {b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"}
)

#: Connection refused, DNS failure, timeouts, a connection dropped mid-answer.
UNREACHABLE = (
    ConnectError,
    ConnectionLost,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    TimeoutError,
)


#: What the health probe asks each kind of backend; "reachable" means it answered 2xx.
PROBE_PATHS = {"ollama": "/api/version", "openai": "/v1/models"}


def backend_base_url(kind: str, url: str) -> str:
    """The one normal form of a backend URL, to which every path FLM sends is appended:
    no trailing ``/``, and for an OpenAI-compatible server no ``/v1`` (its paths carry it),
    so ``http://host:8000/v1`` -- the usual way to write it -- works as ``http://host:8000``."""
    url = url.rstrip("/")
    if kind == "openai":
        url = url.removesuffix("/v1")
    return url


def probe_path(kind: str) -> str:
    return PROBE_PATHS[kind]


class BackendUnavailable(Exception):
    """The backend could not be reached (refused, DNS, timeout, connection lost)."""


class ModelNotFound(Exception):
    """The backend does not know the model."""


class NotSupported(Exception):
    """This kind of backend cannot do that (e.g. pull or delete on an OpenAI server)."""


class BackendError(Exception):
    """The backend answered with an error; ``message`` is the backend's own words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Backend(Protocol):
    """One adapter per backend kind; the only way FLM talks to the model server."""

    kind: str
    base_url: str
    proxy_paths: frozenset[bytes]
    #: False when the backend cannot pull, delete or show models.
    can_manage_models: bool

    async def list_models(self) -> list[dict[str, Any]]: ...

    async def pull(self, name: str, on_progress: Callable[[dict[str, Any]], None]) -> None: ...

    async def delete(self, name: str) -> None: ...

    async def show(self, name: str) -> dict[str, Any]: ...


# Ollama's grammar ([host/][namespace/]model[:tag]): letters, digits, '_', '-', '.'
# (no '.' in a namespace, never '..'), at most 128 characters in all.
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_NAME = re.compile(
    rf"^(?:(?:(?P<host>{_PART})/)?(?P<ns>[A-Za-z0-9_][A-Za-z0-9_-]*)/)?"
    rf"(?P<model>{_PART})(?::(?P<tag>{_PART}))?$"
)
MAX_NAME_LEN = 128


def validate_model_name(name: object) -> str:
    """Return ``name`` if it is a valid Ollama model name, else raise ``ValueError``."""
    if not isinstance(name, str) or not name:
        raise ValueError("name: a model name is required, e.g. 'llama3.2' or 'qwen2.5:0.5b'")
    if len(name) > MAX_NAME_LEN:
        raise ValueError(f"name: a model name has at most {MAX_NAME_LEN} characters")
    if not _NAME.match(name) or ".." in name:
        raise ValueError(
            "name: not a valid model name; expected [namespace/]name[:tag] made of "
            "letters, digits, '.', '_' and '-'"
        )
    return name


@functools.lru_cache(maxsize=4096)
def model_key(name: str) -> str:
    """Ollama's idea of "the same model": case-insensitive, with ``:latest``,
    ``registry.ollama.ai/`` and ``library/`` implied. (Cached: the request path asks it
    of the API's model for every request.)"""
    key = name.strip().lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
    return key if ":" in key.rsplit("/", 1)[-1] else key + ":latest"


def same_model(a: str, b: str) -> bool:
    return a == b or model_key(a) == model_key(b)


async def bounded(
    coro: Coroutine[Any, Any, T], clock: IReactorTime, seconds: float, what: str
) -> T:
    """Run ``coro`` with a total time limit; on timeout raise ``BackendUnavailable``."""
    d: Deferred[T] = Deferred.fromCoroutine(coro)
    d.addTimeout(seconds, clock)
    try:
        return await d
    except TimeoutError:
        raise BackendUnavailable(f"the backend did not answer {what} within {seconds:g} s")


async def send(http: Any, method: str, url: str, **kwargs: Any) -> IResponse:
    """``http.request`` with connection failures turned into ``BackendUnavailable``."""
    try:
        return await http.request(method, url, **kwargs)
    except CancelledError:
        raise
    except UNREACHABLE as e:
        if _cancelled(e):  # the agent wraps a cancellation in ResponseNeverReceived
            raise CancelledError() from e
        raise BackendUnavailable(f"cannot reach the backend at {url}: {_reason(e)}") from e


async def read_body(response: IResponse, url: str) -> bytes:
    """The whole response body; a dropped body is ``BackendUnavailable``."""
    try:
        return await content(response)
    except CancelledError:
        raise
    except UNREACHABLE as e:
        raise BackendUnavailable(f"lost the connection to {url}: {_reason(e)}") from e


def parse_json(body: bytes, url: str) -> Any:
    """``body`` as JSON, or :class:`BackendError`."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BackendError(f"the backend answered {url} with invalid JSON") from e


async def read_json(response: IResponse, url: str) -> Any:
    """The response body as JSON."""
    return parse_json(await read_body(response, url), url)


def error_message(payload: Any, response: IResponse) -> str:
    """The backend's own error message (``{"error": ...}``), or the HTTP status."""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str) and err:
            return err
    phrase = response.phrase.decode("latin-1") if response.phrase else ""
    return f"the backend answered HTTP {response.code} {phrase}".rstrip()


async def read_error(response: IResponse, url: str) -> str:
    """Read a failed response's body and return its message; never raises for bad JSON."""
    try:
        payload = await read_json(response, url)
    except BackendError:
        payload = None
    return error_message(payload, response)


def _cancelled(e: BaseException) -> bool:
    return any(r.check(CancelledError) for r in getattr(e, "reasons", None) or [])


def _reason(e: BaseException) -> str:
    if isinstance(e, (ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed)):
        reasons = getattr(e, "reasons", None) or []
        if reasons:
            return _reason(reasons[0].value)
    text = str(e).strip()
    return text or type(e).__name__
