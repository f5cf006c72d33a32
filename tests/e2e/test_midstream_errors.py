"""A stream the backend cuts after the 200 counts as an error: ``error_rate`` and /metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.fakes.backend import FakeProcess

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_midstream_cut_counts_in_error_rate_and_metrics(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    headers = {"Authorization": f"Bearer {api['key']}"}
    url = f"{api_url(api)}/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers=headers, timeout=10).status_code == 200
    cut = httpx.post(url, json=CHAT, timeout=10,
                     headers={**headers, "X-Fake-Fail": "die_midstream", "X-Fake-Chunks": "6"})
    assert cut.status_code == 200 and "event: error" in cut.text

    def buckets() -> list | None:
        got = gateway.admin("GET", f"/api/apis/{api['id']}/metrics").json()["buckets"]
        return got if sum(b["request_count"] for b in got) == 2 else None

    got = wait_for(buckets, 5, "both requests in the API's metrics")
    errors = sum(b["error_rate"] * b["request_count"] for b in got)
    assert round(errors) == 1, got

    text = httpx.get(f"{gateway.admin_url}/metrics", timeout=5).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("flm_request_errors_total", (("api", str(api["id"])), ("kind", "cut")))] == 1
