"""A model pull's progress as Server-Sent Events, from the real service over real sockets."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.e2e.conftest import Gateway


def test_pull_progress_streams_to_done_and_the_model_list_follows(gateway: Gateway) -> None:
    gateway.fake.configure(pull_interval=0.1)  # slow enough to see progress on the way
    started = gateway.admin("POST", "/api/models/pull", {"name": "tinyllama"})
    assert started.status_code == 202, started.text
    job = started.json()["job"]
    states: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {gateway.token}"}
    with httpx.stream("GET", f"{gateway.admin_url}/api/models/pulls/{job}/events",
                      headers=headers, timeout=15) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():  # ends when the service closes the stream
            if line.startswith("data: "):
                states.append(json.loads(line[len("data: "):]))
    assert states[-1]["status"] == "done" and states[-1]["percent"] == 100.0, states[-1]
    assert states[-1]["status_line"] == "success", states[-1]
    assert all(s["status"] == "running" for s in states[:-1]), states
    percents = [s["percent"] for s in states if s["percent"] is not None]
    assert len(set(percents)) > 2 and max(percents) == 100.0, percents
    names = [m["name"] for m in gateway.admin("GET", "/api/models").json()["models"]]
    assert "tinyllama:latest" in names, names
