"""Keys with the real ``openai`` client against ``twistd flm``: several keys, revoking
one, budgets from the backend's usage across a restart."""

from __future__ import annotations

from typing import Any, Callable

import openai
import pytest

from tests.e2e.conftest import Gateway, api_url, port_open, wait_for

MESSAGES = [{"role": "user", "content": "say hello"}]


def client(api: dict[str, Any], key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_url(api)}/v1", api_key=key, max_retries=0, timeout=10)


def new_key(gateway: Gateway, api: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = gateway.admin("POST", f"/api/apis/{api['id']}/keys", fields)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def text(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_two_keys_revoke_one_the_other_keeps_streaming(gateway: Gateway) -> None:
    api = gateway.create_api()
    second = new_key(gateway, api, name="second")
    first_client, second_client = client(api, api["key"]), client(api, second["key"])
    assert text(first_client.chat.completions.create(model="m", messages=MESSAGES,
                                                      stream=True)) == "Hello from the"
    stream = second_client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    first_chunk = next(iter(stream))
    revoked = gateway.admin("DELETE", f"/api/apis/{api['id']}/keys/default")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    rest = text(stream)
    assert (first_chunk.choices[0].delta.content or "") + rest == "Hello from the"
    with pytest.raises(openai.AuthenticationError) as refused:
        first_client.chat.completions.create(model="m", messages=MESSAGES)
    assert refused.value.code == "invalid_api_key"
    assert text(second_client.chat.completions.create(model="m", messages=MESSAGES,
                                                       stream=True)) == "Hello from the"
    wait_for(lambda: len(gateway.admin("GET", f"/api/apis/{api['id']}/logs?key=second")
                         .json()["items"]) == 2, 5, "the second key's two log rows")
    logs = gateway.admin("GET", f"/api/apis/{api['id']}/logs?key=second").json()["items"]
    assert all(r["key_name"] == "second" for r in logs)


def test_a_budget_holds_across_a_restart(gateway_factory: Callable[..., Gateway]) -> None:
    gateway = gateway_factory(settings={"request_log": False})
    api = gateway.create_api()
    key = new_key(gateway, api, name="metered", daily_token_budget=5)
    metered = client(api, key["key"])
    reply = metered.chat.completions.create(model="m", messages=MESSAGES)
    assert reply.usage is not None and reply.usage.total_tokens >= 5
    gateway.restart()
    wait_for(lambda: port_open(api["port"]), 5, "the API port after the restart")
    shown = gateway.admin("GET", f"/api/apis/{api['id']}/keys/metered").json()
    assert shown["usage"]["tokens_today"] == reply.usage.total_tokens, shown
    assert shown["usage"]["requests_today"] == 1
    with pytest.raises(openai.RateLimitError) as refused:
        metered.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert refused.value.code == "budget_exceeded"
    assert 0 < int(refused.value.response.headers["retry-after"]) <= 86400
    # the API's other key is not metered
    assert client(api, api["key"]).chat.completions.create(
        model="m", messages=MESSAGES).choices[0].message.content == "Hello from the"
