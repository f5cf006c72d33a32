"""The OpenAI-compatible adapter (llama.cpp ``llama-server``, vLLM, LM Studio).

Such servers list their models (``GET /v1/models``) but cannot pull, delete or
describe them: those calls raise :class:`NotSupported`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import attrs
from twisted.internet.interfaces import IReactorTime

from flm.backends.base import (
    OPENAI_PATHS,
    BackendError,
    NotSupported,
    backend_base_url,
    bounded,
    read_error,
    read_json,
    send,
)


@attrs.define(eq=False)
class OpenAIBackend:
    """Talks to an OpenAI-compatible server at ``base_url`` (with or without ``/v1``)."""

    base_url: str = attrs.field(converter=lambda u: backend_base_url("openai", u))
    _http: Any
    _clock: IReactorTime
    request_timeout_s: float = 10.0

    kind = "openai"
    proxy_paths = OPENAI_PATHS
    can_manage_models = False

    async def list_models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``; each entry keeps its fields, with ``name`` = ``id``."""
        return await bounded(self._list(), self._clock, self.request_timeout_s,
                             "GET /v1/models")

    async def _list(self) -> list[dict[str, Any]]:
        url = self.base_url + "/v1/models"
        response = await send(self._http, "GET", url)
        if response.code >= 400:
            raise BackendError(await read_error(response, url))
        payload = await read_json(response, url)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise BackendError("the backend's /v1/models answer has no data list")
        return [{**m, "name": m["id"]} for m in data
                if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def pull(self, name: str, on_progress: Callable[[dict[str, Any]], None]) -> None:
        _unsupported("download models")

    async def delete(self, name: str) -> None:
        _unsupported("delete models")

    async def show(self, name: str) -> dict[str, Any]:
        _unsupported("describe models")


def _unsupported(what: str) -> NoReturn:
    raise NotSupported(
        f"an OpenAI-compatible backend cannot {what} through FLM; "
        "manage its models on the model server itself"
    )
