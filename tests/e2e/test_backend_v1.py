"""``--backend`` of an OpenAI-compatible server works with or without its ``/v1``."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.conftest import Gateway, api_url
from tests.fakes.backend import FakeProcess


def test_openai_backend_given_with_v1(tmp_path: Path) -> None:
    fake = FakeProcess(str(tmp_path / "fake.log")).start()
    gw = Gateway(tmp_path, fake, args=("--backend-kind", "openai",
                                       "--backend", fake.url.rstrip("/") + "/v1/"))
    try:
        gw.start()
        health = gw.http.get(f"{gw.admin_url}/health", timeout=10).json()
        assert health["backend"]["reachable"] is True, health
        api = gw.create_api()
        response = httpx.post(f"{api_url(api)}/v1/chat/completions", timeout=10,
                              headers={"Authorization": f"Bearer {api['key']}"},
                              json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
        assert "/v1/chat/completions" in fake.stats()["by_path"], fake.stats()["by_path"]
    finally:
        gw.kill()
        gw.http.close()
        fake.stop()
