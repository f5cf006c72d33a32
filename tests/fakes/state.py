"""The fake's control side: its config (``/_fake/config``), model list and counters."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from tests.fakes.replies import dumps

DEFAULT_MODELS = ("llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest")
DEFAULT_CONFIG: dict[str, Any] = {
    "delay": 0.0,
    "chunks": 3,
    "interval": 0.0,
    "fail": None,
    "pull_interval": 0.01,
    "paths": None,
}


def normalize_model(name: str) -> str:
    """Ollama's name rule: a name without a tag means ``:latest``."""
    return name if ":" in name else f"{name}:latest"


def model_entry(name: str) -> dict[str, Any]:
    """One model in ``/api/tags`` shape."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    family = "nomic-bert" if "embed" in name else name.split(":")[0].rstrip("0123456789.")
    return {
        "name": name,
        "model": name,
        "modified_at": "2024-10-01T12:00:00.123456+02:00",
        "size": 1_000_000 + int(digest[:5], 16),
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "1.2B",
            "quantization_level": "Q8_0",
        },
    }


class FakeState:
    """Config, model list and counters shared by every request of one fake."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.config: dict[str, Any] = dict(DEFAULT_CONFIG)
        self.models: dict[str, dict[str, Any]] = {n: model_entry(n) for n in DEFAULT_MODELS}
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.aborted = 0
        self.by_path: dict[str, int] = {}
        self.last: dict[str, Any] | None = None
        self.last_by_path: dict[str, dict[str, Any]] = {}
        self._cache: dict[tuple[Any, ...], bytes] = {}

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "cancelled": self.cancelled,
            "aborted": self.aborted,
            "by_path": dict(self.by_path),
            "last": self.last,
            "last_by_path": dict(self.last_by_path),
        }

    def cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> bytes:
        """JSON bytes of ``build()``, computed once per key (the fast non-streaming path)."""
        body = self._cache.get(key)
        if body is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            body = self._cache[key] = dumps(build())
        return body
