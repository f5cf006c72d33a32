"""SIGTERM right after traffic: every log row and every metric count survives the restart."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Gateway, api_url

N = 60


def all_logs(gw: Gateway, api_id: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = f"?limit=25&cursor={cursor}" if cursor else "?limit=25"
        page = gw.admin("GET", f"/api/apis/{api_id}/logs{query}")
        assert page.status_code == 200, page.text
        rows += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError("too many pages")


def test_sigterm_loses_no_log_row(fresh_gateway: Gateway) -> None:
    gw = fresh_gateway
    api = gw.create_api()
    headers = {"Authorization": f"Bearer {api['key']}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10) as client:
        for i in range(N):
            extra = {"stream": True} if i % 3 == 0 else {}
            r = client.post(f"{api_url(api)}/v1/chat/completions", json={**body, **extra},
                            headers=headers)
            assert r.status_code == 200, r.text
        assert client.post(f"{api_url(api)}/v1/chat/completions", json=body,
                           headers={"Authorization": "Bearer wrong"}).status_code == 401

    scrape = httpx.get(f"{gw.admin_url}/metrics", timeout=10)
    assert scrape.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    requests = sum(s.value for s in families["flm_requests"].samples
                   if s.labels.get("api") == str(api["id"]))
    assert requests == N
    refused = [s.value for s in families["flm_refused_keys"].samples
               if s.labels.get("api") == str(api["id"])]
    assert refused == [1]

    # SIGTERM at once: rows may still be buffered (twistd exits by the signal, or 0)
    assert gw.stop() in (0, -15), gw.output()[-3000:]
    gw.start()

    rows = all_logs(gw, api["id"])
    assert len(rows) == N, len(rows)
    assert len({r["id"] for r in rows}) == N
    assert all(r["status"] == 200 and r["created_at"].endswith("Z") for r in rows)
    assert all(r["completion_tokens"] for r in rows), rows[:3]

    metrics = gw.admin("GET", f"/api/apis/{api['id']}/metrics")
    assert metrics.status_code == 200, metrics.text
    assert sum(b["request_count"] for b in metrics.json()["buckets"]) == N

    system = gw.admin("GET", "/api/system")
    assert system.status_code == 200, system.text
    assert system.json()["rss_bytes"] > 0
    assert system.json()["dropped_log_rows"] == 0
