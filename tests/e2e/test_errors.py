"""What a model client sees when something is wrong: keys, paths, bodies, the backend."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.fakes.backend import FakeProcess

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def post(api: dict[str, Any], path: str, *, key: str | None = "api", **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {api['key'] if key == 'api' else key}"
    return httpx.post(api_url(api) + path, headers=headers, timeout=15, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert response.headers.get("x-request-id"), dict(response.headers)
    return error  # type: ignore[no-any-return]


def test_wrong_or_missing_key_is_401(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    assert_openai_error(post(api, "/v1/chat/completions", key=None, json=CHAT), 401, "invalid_api_key")
    assert_openai_error(post(api, "/v1/chat/completions", key="flm-" + "x" * 43, json=CHAT), 401, "invalid_api_key")
    other = gateway.create_api()
    assert_openai_error(post(api, "/v1/chat/completions", key=other["key"], json=CHAT), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{api_url(api)}/v1", api_key="nope", max_retries=0).models.list()
    assert "/v1/chat/completions" not in fake.stats()["by_path"]


def test_model_management_paths_are_not_proxied(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    response = post(api, "/api/pull", json={"model": "llama3.2"})
    assert response.status_code == 404, response.text
    response = httpx.request("DELETE", api_url(api) + "/api/delete", json={"model": api["model"]},
                             headers={"Authorization": f"Bearer {api['key']}"})
    assert response.status_code in (404, 405), response.text
    assert response.status_code == 404, "contract: other paths are 404"
    by_path = fake.stats()["by_path"]
    assert "/api/pull" not in by_path and "/api/delete" not in by_path, by_path


def test_body_over_10_mib_is_413(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    big = b'{"model":"m","prompt":"' + b"a" * (10 * 1024 * 1024) + b'"}'
    response = post(api, "/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")
    assert "/v1/completions" not in fake.stats()["by_path"]
    # Just under the limit still goes through.
    ok = b'{"model":"m","prompt":"' + b"a" * (10 * 1024 * 1024 - 100) + b'"}'
    assert post(api, "/v1/completions", content=ok).status_code == 200


def test_malformed_json_is_400(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    for body in (b"{not json", b"", b"\xff\xfe", b"[1, 2", b'{"a": ' * 100_000):
        response = post(api, "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert_openai_error(response, 400, "invalid_json")
    assert "/v1/chat/completions" not in fake.stats()["by_path"]


def test_every_response_carries_x_request_id(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    cases = [
        post(api, "/v1/chat/completions", json=CHAT),
        post(api, "/v1/chat/completions", key=None, json=CHAT),
        post(api, "/v1/nowhere", json=CHAT),
        post(api, "/v1/chat/completions", content=b"{"),
        httpx.get(api_url(api) + "/v1/models", headers={"Authorization": f"Bearer {api['key']}"}),
    ]
    statuses = [r.status_code for r in cases]
    assert statuses == [200, 401, 404, 400, 200], statuses
    for response in cases:
        assert response.headers.get("x-request-id"), (response.status_code, dict(response.headers))
    ids = {r.headers["x-request-id"] for r in cases}
    assert len(ids) == len(cases), ids
    for key in ("api", None):
        echoed = post(api, "/v1/chat/completions", key=key, json=CHAT, headers={"X-Request-Id": "client-req-42"})
        assert echoed.headers.get("x-request-id") == "client-req-42", dict(echoed.headers)
    stream = post(api, "/v1/chat/completions", json={**CHAT, "stream": True}, headers={"X-Request-Id": "client-req-43"})
    assert stream.status_code == 200 and stream.headers.get("x-request-id") == "client-req-43"


def test_backend_down_is_502(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    fake.stop()
    started = time.monotonic()
    assert_openai_error(post(api, "/v1/chat/completions", json=CHAT), 502, "backend_unavailable")
    assert time.monotonic() - started < 5
    response = post(api, "/api/chat", json={**CHAT, "stream": True})
    assert_openai_error(response, 502, "backend_unavailable")
    health = wait_for(lambda: (h := httpx.get(f"{gateway.admin_url}/health", timeout=5)).status_code == 503 and h,
                      5, "/health to report the backend down")
    assert health.json()["status"] == "degraded" and health.json()["backend"]["reachable"] is False


def test_backend_dying_mid_stream_is_not_passed_off_as_complete(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    fail = {"X-Fake-Fail": "die_midstream", "X-Fake-Chunks": "6"}
    sse = post(api, "/v1/chat/completions", json={**CHAT, "stream": True}, headers=fail)
    assert sse.status_code == 200
    events = [line for line in sse.text.splitlines() if line]
    assert len([e for e in events if e.startswith("data: {\"id\"")]) == 3, events
    assert "data: [DONE]" not in events and any("error" in e for e in events[-2:]), events[-2:]
    lines: list[str] = []
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", api_url(api) + "/api/chat", json={**CHAT, "stream": True}, timeout=10,
                          headers={"Authorization": f"Bearer {api['key']}", **fail}) as response:
            lines.extend(line for line in response.iter_lines() if line)
    assert len(lines) == 3 and '"done":true' not in lines[-1], lines


def test_upstream_silence_mid_stream_is_cut_after_upstream_timeout(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(upstream_timeout_s=1)
    started = time.monotonic()
    lines: list[str] = []
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", api_url(api) + "/api/chat", json={**CHAT, "stream": True}, timeout=10,
                          headers={"Authorization": f"Bearer {api['key']}", "X-Fake-Fail": "stall_midstream",
                                   "X-Fake-Chunks": "6"}) as response:
            lines.extend(line for line in response.iter_lines() if line)
    assert len(lines) == 3 and 0.9 <= time.monotonic() - started < 4
    wait_for(lambda: (s := fake.stats())["cancelled"] == 1 and s["in_flight"] == 0, 5, "the stalled upstream cancelled")
    # A slow stream whose chunks come more often than the timeout is not cut.
    slow = post(api, "/api/chat", json={**CHAT, "stream": True}, headers={"X-Fake-Chunks": "5", "X-Fake-Interval": "0.4"})
    assert slow.status_code == 200 and '"done":true' in slow.text.splitlines()[-1]


@pytest.mark.parametrize("fail", ["reset", "garbage"])
def test_broken_backend_connection_is_502(gateway: Gateway, fake: FakeProcess, fail: str) -> None:
    api = gateway.create_api()
    response = post(api, "/v1/chat/completions", json=CHAT, headers={"X-Fake-Fail": fail})
    assert response.status_code == 502, (response.status_code, response.text)
    assert response.json()["error"]["code"] in ("backend_unavailable", "backend_error"), response.text


def test_backend_error_status_is_relayed(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    response = post(api, "/v1/chat/completions", json=CHAT, headers={"X-Fake-Fail": "status:503"})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["message"] == "fake failure 503"


def test_upstream_timeout_is_504(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(upstream_timeout_s=1)
    started = time.monotonic()
    response = post(api, "/v1/chat/completions", json=CHAT, headers={"X-Fake-Fail": "stall"})
    elapsed = time.monotonic() - started
    assert_openai_error(response, 504, "backend_timeout")
    assert 0.9 <= elapsed < 5, elapsed
    wait_for(lambda: (s := fake.stats())["in_flight"] == 0 and s["cancelled"] == 1, 5,
             "the timed-out upstream request to be cancelled")
