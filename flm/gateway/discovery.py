"""Model discovery on an API port, answered for the API's one model.

Clients ask what they may use before they infer: OpenAI's ``GET /v1/models`` and
``/v1/models/{id}``; Ollama's ``GET /api/tags`` and ``POST /api/show`` (``/api/version`` is
relayed as it is). Each answer names the API's model only, so a key for one API never
reveals the backend's other models. Not on the hot path: nothing here is queued.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from flm.backends.base import ModelNotFound, same_model

MODELS_PREFIX = b"/v1/models/"
#: Ollama's discovery paths an API port answers (with an Ollama backend only).
OLLAMA_DISCOVERY = {b"/api/tags": b"GET", b"/api/version": b"GET", b"/api/show": b"POST"}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "flm"}


def models_list(model: str) -> bytes:
    """``GET /v1/models``: the API's one model, in OpenAI's shape."""
    return _dumps({"object": "list", "data": [_model_object(model)]})


def model_by_id(model: str, path: bytes) -> bytes | None:
    """``GET /v1/models/{id}``: the API's model, or None (404) for any other id."""
    wanted = unquote(path[len(MODELS_PREFIX):].decode("utf-8", "replace"))
    if wanted and (wanted == model or same_model(wanted, model)):
        return _dumps(_model_object(model))
    return None


async def tags(backend: Any, model: str) -> bytes:
    """``GET /api/tags``: the backend's entry for the API's model (a bare one when the
    backend does not list it, as with ``allow_unknown_model``)."""
    entries = [m for m in await backend.list_models() if same_model(m["name"], model)]
    if not entries:
        entries = [{"name": model, "model": model, "modified_at": "1970-01-01T00:00:00Z",
                    "size": 0, "digest": "", "details": {}}]
    return _dumps({"models": entries[:1]})


async def show(backend: Any, model: str, raw: bytes) -> bytes:
    """``POST /api/show``: the backend's answer for the API's model. Asking for another
    model is ``ModelNotFound``; a body that is not a JSON object is ``ValueError``."""
    body = json.loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    wanted = body.get("model") or body.get("name") or model
    if not isinstance(wanted, str) or not same_model(wanted, model):
        raise ModelNotFound(f"model '{str(wanted)[:200]}' not found")
    return _dumps(await backend.show(model))
