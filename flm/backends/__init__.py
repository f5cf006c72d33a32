"""One adapter per backend kind; :func:`make_backend` picks it."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from flm.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ModelNotFound,
    NotSupported,
    backend_base_url,
    probe_path,
    validate_model_name,
)
from flm.backends.ollama import OllamaBackend
from flm.backends.openai import OpenAIBackend

KINDS = {"ollama": OllamaBackend, "openai": OpenAIBackend}


def make_backend(kind: str, base_url: str, http: Any, clock: IReactorTime) -> Backend:
    """The adapter for ``kind`` (``ollama`` or ``openai``) over a treq ``HTTPClient``."""
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"backend_kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    return cls(base_url, http, clock)


__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "ModelNotFound",
    "NotSupported",
    "OllamaBackend",
    "OpenAIBackend",
    "backend_base_url",
    "make_backend",
    "probe_path",
    "validate_model_name",
]
