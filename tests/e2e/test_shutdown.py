"""Stopping with a stream still running: it is told why, and its log row says so."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import httpx

from tests.e2e.conftest import Background, Gateway, api_url, wait_for


def test_a_stream_cut_at_the_grace_period_gets_shutting_down(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(settings={"grace_period_s": 0.5})
    api = gw.create_api()

    def stream() -> list[str]:
        headers = {"Authorization": f"Bearer {api['key']}", "X-Request-Id": "long-sse",
                   "X-Fake-Chunks": "100", "X-Fake-Interval": "0.1"}
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", f"{api_url(api)}/v1/chat/completions", json=body,
                          headers=headers, timeout=10) as response:
            return list(response.iter_lines())

    long = Background(stream)
    wait_for(lambda: gw.fake.stats()["in_flight"] == 1, 5, "the stream at the fake")
    gw.stop()
    lines = long.result()  # ends cleanly: no reset
    assert "event: error" in lines, lines[-5:]
    data = lines[lines.index("event: error") + 1]
    assert json.loads(data.removeprefix("data: "))["error"]["code"] == "shutting_down", data
    assert "waiting for 1 request" in gw.output(), gw.output()[-2000:]

    gw.start()
    rows = wait_for(lambda: gw.admin("GET", f"/api/apis/{api['id']}/logs").json()["items"], 5,
                    "the log row")
    row = next(r for r in rows if r["request_id"] == "long-sse")
    assert row["error"] == "shutting_down", row


def test_a_queued_request_is_refused_at_stop_and_never_sent(
        gateway_factory: Callable[..., Gateway]) -> None:
    """The newcomer's case: one stream at the backend, one queued behind it; SIGTERM.
    The queued one is answered 503 shutting_down at once and never reaches the backend."""
    gw = gateway_factory(settings={"grace_period_s": 3})
    api = gw.create_api(max_concurrent=1)
    headers = {"Authorization": f"Bearer {api['key']}", "X-Fake-Chunks": "8",
               "X-Fake-Interval": "0.2"}
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    def stream() -> list[str]:
        with httpx.stream("POST", f"{api_url(api)}/v1/chat/completions", json=body,
                          headers=headers, timeout=15) as response:
            return list(response.iter_lines())

    def queued() -> httpx.Response:
        return httpx.post(f"{api_url(api)}/v1/chat/completions", json=body,
                          headers={**headers, "X-Request-Id": "queued"}, timeout=15)

    first = Background(stream)
    wait_for(lambda: gw.fake.stats()["in_flight"] == 1, 5, "the stream at the fake")
    second = Background(queued)
    wait_for(lambda: gw.admin("GET", "/api/system").json()["queue_depth"][api["name"]] == 1,
             5, "the second request queued")
    gw.proc.send_signal(signal.SIGTERM)
    answer = second.result()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "shutting_down", answer.text
    assert answer.headers.get("retry-after"), answer.headers
    first.result()  # the stream at the backend finishes within the grace period
    assert gw.fake.stats()["by_path"].get("/v1/chat/completions") == 1, gw.fake.stats()
    gw.stop()
