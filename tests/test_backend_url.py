"""One normalisation of the backend URL, used by the adapter, the proxy and the health probe."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from flm.backends import backend_base_url, make_backend, probe_path


@pytest.mark.parametrize("kind, url, base", [
    ("openai", "http://h:8000/v1", "http://h:8000"),
    ("openai", "http://h:8000/v1/", "http://h:8000"),
    ("openai", "http://h:8000", "http://h:8000"),
    ("openai", "http://h:8000/prefix/v1", "http://h:8000/prefix"),
    ("ollama", "http://h:11434/", "http://h:11434"),
    ("ollama", "http://h:11434", "http://h:11434"),
])
def test_base_url(kind: str, url: str, base: str) -> None:
    assert backend_base_url(kind, url) == base
    assert make_backend(kind, url, None, Clock()).base_url == base


def test_probe_paths() -> None:
    assert probe_path("ollama") == "/api/version"
    assert probe_path("openai") == "/v1/models"
