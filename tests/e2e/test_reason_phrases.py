"""Reason phrases on the wire: every 429 says ``Too Many Requests``, admin 422s theirs."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import Gateway, api_url
from tests.fakes.backend import FakeProcess

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_standard_reason_phrases(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(rate_limit_rpm=1)
    auth = {"Authorization": f"Bearer {api['key']}"}
    url = f"{api_url(api)}/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers=auth, timeout=10).status_code == 200
    limited = httpx.post(url, json=CHAT, headers=auth, timeout=10)
    assert (limited.status_code, limited.reason_phrase) == (429, "Too Many Requests")
    for _ in range(21):
        wrong = httpx.post(url, json=CHAT, headers={"Authorization": "Bearer flm-wrong"},
                           timeout=10)
    assert (wrong.status_code, wrong.reason_phrase) == (429, "Too Many Requests")
    invalid = gateway.admin("POST", "/api/apis", {"name": "x", "model": "m", "port": "no"})
    assert (invalid.status_code, invalid.reason_phrase) == (422, "Unprocessable Entity")
