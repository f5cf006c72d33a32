"""Stopping with a stream still running: it is told why, and its log row says so."""

from __future__ import annotations

import json
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
