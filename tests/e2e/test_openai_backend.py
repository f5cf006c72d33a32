"""``--backend-kind openai``: usage asked for on the client's behalf, Ollama paths closed."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai

from tests.e2e.conftest import Gateway, api_url, wait_for

MESSAGES = [{"role": "user", "content": "two words"}]


def test_openai_kind_backend(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(args=("--backend-kind", "openai"))
    api = gw.create_api()
    client = openai.OpenAI(base_url=f"{api_url(api)}/v1", api_key=api["key"], max_retries=0, timeout=10)

    chunks = list(client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers={"X-Request-Id": "no-usage-asked"},
    ))
    assert chunks and all(c.choices and c.usage is None for c in chunks), [c.model_dump() for c in chunks[-2:]]
    forwarded = gw.fake.stats()["last_by_path"]["/v1/chat/completions"]["json"]
    assert forwarded["model"] == api["model"]
    assert forwarded.get("stream_options", {}).get("include_usage") is True, forwarded

    with_usage = list(client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
    ))
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None

    def row() -> dict | None:
        items = gw.admin("GET", f"/api/apis/{api['id']}/logs").json()["items"]
        return next((r for r in items if r["request_id"] == "no-usage-asked"), None)

    logged = wait_for(row, 5, "the stream's log row")
    assert (logged["prompt_tokens"], logged["completion_tokens"]) == (2, 3), logged

    auth = {"Authorization": f"Bearer {api['key']}"}
    for path in ("/api/chat", "/api/generate", "/api/embed"):
        response = httpx.post(api_url(api) + path, json={"model": "m"}, headers=auth, timeout=5)
        assert response.status_code == 404, (path, response.status_code, response.text)
    assert not any(p.startswith("/api/") and p != "/api/tags" for p in gw.fake.stats()["by_path"])

    pull = gw.admin("POST", "/api/models/pull", {"name": "llama3.2"})
    assert pull.status_code == 501 and pull.json()["error"]["code"] == "not_supported", pull.text


def test_a_v1_base_url_is_the_usual_form(tmp_path, fake) -> None:
    """``--backend http://host:8000/v1``: requests go to /v1/chat/completions, not /v1/v1/..."""
    gw = Gateway(tmp_path, fake, args=("--backend", fake.url + "/v1/", "--backend-kind", "openai"))
    try:
        gw.start()
        assert gw.admin("GET", "/health").json()["backend"]["reachable"] is True
        api = gw.create_api()
        response = httpx.post(f"{api_url(api)}/v1/chat/completions",
                              json={"model": "m", "messages": MESSAGES},
                              headers={"Authorization": f"Bearer {api['key']}"}, timeout=10)
        assert response.status_code == 200, response.text
        assert not any(p.startswith("/v1/v1") for p in fake.stats()["by_path"])
    finally:
        gw.kill()
        gw.http.close()
