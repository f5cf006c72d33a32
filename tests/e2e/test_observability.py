"""What FLM records about the requests it served: log rows, metrics, forwarded headers."""

from __future__ import annotations

from typing import Any

import httpx
import ollama

from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.fakes.backend import FakeProcess

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def post(api: dict[str, Any], path: str, body: Any, rid: str, key: str | None = None, **headers: str) -> httpx.Response:
    return httpx.post(
        api_url(api) + path, json=body, timeout=15,
        headers={"Authorization": f"Bearer {key or api['key']}", "X-Request-Id": rid, **headers},
    )


def logs(gateway: Gateway, api: dict[str, Any], query: str = "") -> dict[str, Any]:
    response = gateway.admin("GET", f"/api/apis/{api['id']}/logs{query}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_log_rows_describe_each_request(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    assert post(api, "/v1/chat/completions", CHAT, "rid-plain").status_code == 200
    stream = post(api, "/v1/chat/completions", {**CHAT, "stream": True}, "rid-sse",
                  **{"X-Fake-Chunks": "4", "X-Fake-Interval": "0.1"})
    assert stream.status_code == 200
    client = ollama.Client(host=api_url(api), headers={"Authorization": f"Bearer {api['key']}", "X-Request-Id": "rid-ndjson"})
    assert len(list(client.chat(model="m", messages=CHAT["messages"], stream=True))) == 4
    assert post(api, "/v1/chat/completions", CHAT, "rid-broken", **{"X-Fake-Fail": "reset"}).status_code == 502
    assert post(api, "/v1/chat/completions", CHAT, "rid-refused", key="flm-wrong").status_code == 401

    items = wait_for(lambda: len(items := logs(gateway, api)["items"]) >= 4 and items, 5, "4 log rows")
    assert [row["request_id"] for row in items] == ["rid-broken", "rid-ndjson", "rid-sse", "rid-plain"]
    ids = [row["id"] for row in items]
    assert ids == sorted(ids, reverse=True)
    rows = {row["request_id"]: row for row in items}
    for rid in ("rid-plain", "rid-sse", "rid-ndjson"):
        row = rows[rid]
        assert row["status"] == 200 and row["method"] == "POST" and row["error"] is None, row
        assert row["model"] == api["model"], row
        assert row["prompt_tokens"] == 1, row
        assert row["bytes_in"] > 0 and row["bytes_out"] > 0, row
        assert 0 <= row["queue_ms"] and 0 <= row["ttfb_ms"] <= row["upstream_ms"] <= row["response_ms"], row
    assert rows["rid-plain"]["completion_tokens"] == 3 and rows["rid-plain"]["path"] == "/v1/chat/completions"
    assert rows["rid-sse"]["completion_tokens"] == 4, rows["rid-sse"]
    assert rows["rid-sse"]["upstream_ms"] - rows["rid-sse"]["ttfb_ms"] >= 250, rows["rid-sse"]
    assert rows["rid-ndjson"]["completion_tokens"] == 3 and rows["rid-ndjson"]["path"] == "/api/chat"
    assert rows["rid-broken"]["status"] == 502 and rows["rid-broken"]["error"], rows["rid-broken"]

    only_5xx = logs(gateway, api, "?status=5xx")["items"]
    assert [row["request_id"] for row in only_5xx] == ["rid-broken"]
    assert [row["request_id"] for row in logs(gateway, api, "?status=502")["items"]] == ["rid-broken"]
    page = logs(gateway, api, "?limit=3")
    assert len(page["items"]) == 3 and page["next_cursor"]
    rest = logs(gateway, api, f"?limit=3&cursor={page['next_cursor']}")
    assert [row["request_id"] for row in rest["items"]] == ["rid-plain"] and rest["next_cursor"] is None


def test_prometheus_metrics(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    assert post(api, "/v1/chat/completions", CHAT, "rid-m1").status_code == 200
    assert post(api, "/v1/chat/completions", CHAT, "rid-m2", key="flm-wrong").status_code == 401
    response = httpx.get(f"{gateway.admin_url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    label = f'api="{api["id"]}"'
    lines = [line for line in response.text.splitlines() if label in line or f'api="{api["name"]}"' in line]
    assert any(line.startswith("flm_requests_total") and ("2xx" in line or '"200"' in line) for line in lines), lines
    # Refused keys are counted too (not logged one by one).
    refused = [line for line in lines if "refused" in line and not line.startswith("#")]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 1, lines


def test_hop_by_hop_headers_are_not_forwarded(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    response = post(
        api, "/v1/chat/completions", CHAT, "rid-hop",
        **{"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5",
           "Proxy-Authorization": "Basic c2VjcmV0", "TE": "trailers", "X-Custom": "kept"},
    )
    assert response.status_code == 200, response.text
    headers = fake.stats()["last_by_path"]["/v1/chat/completions"]["headers"]
    for name in ("x-hop", "keep-alive", "proxy-authorization", "te", "authorization"):
        assert name not in headers, (name, headers)
    assert headers.get("x-custom") == "kept", headers


def test_wrong_method_is_405_and_unknown_path_404(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    auth = {"Authorization": f"Bearer {api['key']}"}
    response = httpx.get(f"{api_url(api)}/v1/chat/completions", headers=auth, timeout=5)
    assert response.status_code == 405, response.text
    assert response.json()["error"]["code"], response.text
    response = httpx.post(f"{api_url(api)}/v2/whatever", headers=auth, json={}, timeout=5)
    assert response.status_code == 404, response.text
    assert set(response.json()["error"]) >= {"message", "type", "code"}
    by_path = fake.stats()["by_path"]
    assert "/v1/chat/completions" not in by_path and "/v2/whatever" not in by_path, by_path


def test_client_hanging_up_mid_stream_is_logged_with_what_was_sent(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    headers = {"Authorization": f"Bearer {api['key']}", "X-Request-Id": "rid-hangup",
               "X-Fake-Chunks": "100", "X-Fake-Interval": "0.1"}
    with httpx.stream("POST", api_url(api) + "/api/chat", json={"model": "m", "messages": []},
                      headers=headers, timeout=10) as response:
        lines = 0
        for line in response.iter_lines():
            lines += bool(line)
            if lines == 3:
                break
    wait_for(lambda: fake.stats()["cancelled"] == 1, 5, "the upstream stream to be cancelled")
    row = wait_for(lambda: next((r for r in logs(gateway, api)["items"] if r["request_id"] == "rid-hangup"), None),
                   5, "the hung-up request's log row")
    assert row["error"] == "client_closed", row
    # The client got a 200 and three chunks before it left: the row must say so.
    assert row["ttfb_ms"] is not None and row["bytes_out"] > 0, {k: row[k] for k in ("status", "ttfb_ms", "upstream_ms", "bytes_out", "error")}
