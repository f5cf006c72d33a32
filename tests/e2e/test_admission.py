"""Limits as a client meets them: queue, queue timeout, rate limit, priority, live changes.

The session's gateway talks to an Ollama-kind backend, so at most one request is at the
backend at once across all APIs (``--backend-max-concurrent`` defaults to 1).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx

from tests.e2e.conftest import Background, Gateway, api_url, port_open, wait_for
from tests.fakes.backend import FakeProcess

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(api: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 15) -> httpx.Response:
    return httpx.post(
        f"{api_url(api)}/v1/chat/completions", json=CHAT, timeout=timeout,
        headers={"Authorization": f"Bearer {api['key']}", **(headers or {})},
    )


def wait_in_flight(fake: FakeProcess, n: int) -> None:
    wait_for(lambda: fake.stats()["in_flight"] >= n, 5, f"{n} request(s) at the fake")


def system(gateway: Gateway) -> dict[str, Any]:
    response = gateway.admin("GET", "/api/system")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_queued(gateway: Gateway, api: dict[str, Any], n: int) -> None:
    """Until ``n`` requests wait in ``api``'s own queue."""
    wait_for(lambda: system(gateway)["queue_depth"].get(api["name"]) == n, 10,
             f"{n} request(s) queued for {api['name']}")


def wait_backend_waiting(gateway: Gateway, n: int) -> None:
    """Until ``n`` requests (of any API) wait for the backend."""
    wait_for(lambda: system(gateway)["backend"]["waiting"] == n, 10,
             f"{n} request(s) waiting for the backend")


def hold_backend(api: dict[str, Any]) -> socket.socket:
    """A request that keeps the backend busy until its socket is closed (the client hangs
    up: FLM cancels it upstream and frees the backend)."""
    body = json.dumps(CHAT).encode()
    sock = socket.create_connection(("127.0.0.1", api["port"]), timeout=5)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                 b"X-Fake-Delay: 30\r\nContent-Length: %d\r\n\r\n%s"
                 % (api["key"].encode(), len(body), body))
    return sock


def test_full_queue_is_429_with_retry_after(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(max_concurrent=1, max_queue=1)
    slow = {"X-Fake-Delay": "0.8"}
    first = Background(lambda: chat(api, slow))
    wait_in_flight(fake, 1)
    second = Background(lambda: chat(api, slow))
    wait_queued(gateway, api, 1)  # the second one has the only queue place
    third = chat(api, slow)
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "queue_full"
    assert int(third.headers["retry-after"]) >= 1
    assert first.result().status_code == 200 and second.result().status_code == 200
    stats = fake.stats()
    assert stats["max_in_flight"] == 1 and stats["by_path"]["/v1/chat/completions"] == 2


def test_queue_timeout_is_503(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(max_concurrent=1, queue_timeout_s=1)
    first = Background(lambda: chat(api, {"X-Fake-Delay": "2"}))
    wait_in_flight(fake, 1)
    started = time.monotonic()
    second = chat(api)
    elapsed = time.monotonic() - started
    assert second.status_code == 503, second.text
    assert second.json()["error"]["code"] == "queue_timeout"
    assert 0.8 <= elapsed < 1.9, elapsed
    assert first.result().status_code == 200
    assert fake.stats()["by_path"]["/v1/chat/completions"] == 1


def test_rate_limit_is_429_with_retry_after(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(rate_limit_rpm=2)
    statuses = []
    for _ in range(4):
        response = chat(api)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited", response.text
            assert int(response.headers["retry-after"]) >= 1
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    assert statuses.count(200) <= 2, statuses
    assert fake.stats()["by_path"]["/v1/chat/completions"] == statuses.count(200)


def test_higher_priority_is_served_first_when_the_backend_is_busy(gateway: Gateway, fake: FakeProcess) -> None:
    busy = gateway.create_api()
    low = gateway.create_api(model="qwen2.5:0.5b", priority=0)
    high = gateway.create_api(model="nomic-embed-text:latest", priority=10)
    blocker = hold_backend(busy)
    try:
        wait_in_flight(fake, 1)
        waiting_low = Background(lambda: chat(low))
        wait_backend_waiting(gateway, 1)  # low waits first...
        waiting_high = Background(lambda: chat(high))
        wait_backend_waiting(gateway, 2)  # ...then high, both before the backend frees up
    finally:
        blocker.close()
    for call in (waiting_low, waiting_high):
        assert call.result().status_code == 200
    # One at a time at the backend: high went first although it came last.
    assert fake.stats()["max_in_flight"] == 1
    assert fake.stats()["last_by_path"]["/v1/chat/completions"]["json"]["model"] == low["model"]


def test_patch_applies_at_once(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    assert chat(api).status_code == 200
    response = gateway.admin("PATCH", f"/api/apis/{api['id']}", {"model": "qwen2.5:0.5b", "upstream_timeout_s": 1})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "qwen2.5:0.5b"
    assert chat(api).status_code == 200
    assert fake.stats()["last_by_path"]["/v1/chat/completions"]["json"]["model"] == "qwen2.5:0.5b"
    started = time.monotonic()
    assert chat(api, {"X-Fake-Fail": "stall"}).status_code == 504
    assert time.monotonic() - started < 3


def test_stop_start_delete_close_and_open_the_port(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    for _ in range(2):  # idempotent
        assert gateway.admin("POST", f"/api/apis/{api['id']}/stop").status_code == 200
    wait_for(lambda: not port_open(api["port"]), 5, "the port to close")
    assert gateway.admin("GET", f"/api/apis/{api['id']}").json()["status"] == "stopped"
    for _ in range(2):
        assert gateway.admin("POST", f"/api/apis/{api['id']}/start").status_code == 200
    wait_for(lambda: port_open(api["port"]), 5, "the port to open")
    assert chat(api).status_code == 200
    assert gateway.admin("DELETE", f"/api/apis/{api['id']}").status_code in (200, 204)
    wait_for(lambda: not port_open(api["port"]), 5, "the deleted API's port to close")
    assert gateway.admin("GET", f"/api/apis/{api['id']}").status_code == 404
