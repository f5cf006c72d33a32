"""The service as a whole: restart, secrets at rest, and the admin API over HTTP."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.conftest import Background, Gateway, api_url, port_open, wait_for

# twistd ends by re-raising the signal it stopped on, so a clean SIGTERM exit is -15.
CLEAN_EXIT = (0, -signal.SIGTERM)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(api: dict[str, Any], key: str | None = None, headers: dict[str, str] | None = None,
         **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{api_url(api)}/v1/chat/completions", json={**CHAT, **extra},
        headers={"Authorization": f"Bearer {key or api['key']}", **(headers or {})}, timeout=10,
    )


def test_restart_restores_running_apis(fresh_gateway: Gateway) -> None:
    gw = fresh_gateway
    running = gw.create_api()
    stopped = gw.create_api()
    assert gw.admin("POST", f"/api/apis/{stopped['id']}/stop").status_code == 200
    wait_for(lambda: not port_open(stopped["port"]), 5, "the stopped API's port to close")
    assert chat(running).status_code == 200

    assert gw.stop() in CLEAN_EXIT, gw.output()[-2000:]
    assert not port_open(running["port"])
    gw.start()

    wait_for(lambda: port_open(running["port"]), 5, "the running API to listen again")
    assert chat(running).status_code == 200
    assert gw.admin("GET", f"/api/apis/{running['id']}").json()["status"] == "running"
    assert gw.admin("GET", f"/api/apis/{stopped['id']}").json()["status"] == "stopped"
    assert not port_open(stopped["port"])


def test_keys_never_stored_or_logged(fresh_gateway: Gateway) -> None:
    gw = fresh_gateway
    api = gw.create_api()
    assert chat(api).status_code == 200
    assert chat(api, stream=True).status_code == 200
    assert chat(api, key=api["key"] + "x").status_code == 401
    rotated = gw.admin("POST", f"/api/apis/{api['id']}/rotate-key")
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["key"]
    assert new_key != api["key"]
    assert chat(api, key=api["key"]).status_code == 401
    assert chat(api, key=new_key).status_code == 200
    # Log rows are buffered (flushed every second by default): wait until they are written.
    logs = wait_for(lambda: (r := gw.admin("GET", f"/api/apis/{api['id']}/logs").json())["items"] and r,
                    5, "the log rows to be flushed")
    assert gw.stop() in CLEAN_EXIT

    files = sorted(p for p in gw.data_dir.iterdir() if p.name.startswith("flm.db"))
    assert gw.data_dir / "flm.db" in files, sorted(gw.data_dir.iterdir())
    for key in (api["key"], new_key):
        secret = key.encode()
        tail = key[len(api["key_prefix"]):].encode() if key.startswith(api["key_prefix"]) else secret
        for path in gw.data_dir.rglob("*"):
            if path.is_file():
                raw = path.read_bytes()
                assert secret not in raw and tail not in raw, f"the key is in {path.name}"
        output = gw.output()
        assert key not in output and tail.decode() not in output, "the key is in the service's output"
        assert key not in str(logs)


def test_admin_needs_the_token(gateway: Gateway) -> None:
    for token in (None, "wrong-token"):
        response = gateway.admin("GET", "/api/apis", token=token)
        assert response.status_code == 401, response.text
        assert set(response.json()["error"]) >= {"code", "message"}
    health = httpx.get(f"{gateway.admin_url}/health", timeout=5)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok" and health.json()["backend"]["reachable"] is True


def test_admin_duplicate_name_is_409(gateway: Gateway) -> None:
    api = gateway.create_api()
    response = gateway.admin("POST", "/api/apis", {"name": api["name"], "model": api["model"]})
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] and response.json()["error"]["message"]
    taken = gateway.admin("POST", "/api/apis", {"name": api["name"] + "-2", "model": api["model"], "port": api["port"]})
    assert taken.status_code == 409, taken.text


def test_admin_invalid_field_is_422_naming_it(gateway: Gateway) -> None:
    cases = [
        ({"name": "ok-name-1", "model": "llama3.2:1b", "max_concurrent": -1}, "max_concurrent"),
        ({"name": "ok-name-2", "model": "llama3.2:1b", "bogus_field": 1}, "bogus_field"),
        ({"model": "llama3.2:1b"}, "name"),
        ({"name": "ok-name-3", "model": "llama3.2:1b", "port": 70000}, "port"),
        ({"name": "ok-name-4", "model": "no-such-model:7b"}, "model"),
    ]
    for body, field in cases:
        response = gateway.admin("POST", "/api/apis", body)
        assert response.status_code == 422, (body, response.status_code, response.text)
        error = response.json()["error"]
        assert field in error["message"], (field, error)
    assert gateway.admin("GET", "/api/apis?limit=500").json()["total"] >= 0


def test_admin_malformed_json_is_400(gateway: Gateway) -> None:
    for body in (b"{not json", b"[1,", b"\xff"):
        response = gateway.admin("POST", "/api/apis", content=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["code"] and error["message"] and "Traceback" not in response.text


def test_sigterm_finishes_short_requests_cuts_long_ones_and_keeps_every_row(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(settings={"grace_period_s": 1.0}, args=("--backend-max-concurrent", "4"))
    api = gw.create_api(max_concurrent=4)
    for i in range(5):
        assert chat(api, headers={"X-Request-Id": f"before-{i}"}).status_code == 200

    def long_stream() -> tuple[int, str | None]:
        lines, error = 0, None
        headers = {"Authorization": f"Bearer {api['key']}", "X-Request-Id": "long-stream",
                   "X-Fake-Chunks": "60", "X-Fake-Interval": "0.1"}
        try:
            with httpx.stream("POST", f"{api_url(api)}/api/generate", json={"model": "m", "prompt": "hi"},
                              headers=headers, timeout=10) as response:
                for line in response.iter_lines():
                    lines += bool(line)
        except httpx.HTTPError as e:
            error = type(e).__name__
        return lines, error

    stream = Background(long_stream)
    short = Background(lambda: chat(api, headers={"X-Request-Id": "short", "X-Fake-Delay": "0.4"}))
    wait_for(lambda: gw.fake.stats()["in_flight"] == 2, 5, "both requests at the fake")
    started = time.monotonic()
    assert gw.stop() in CLEAN_EXIT
    assert time.monotonic() - started < 1.0 + 3, "the grace period was not kept"
    assert short.result().status_code == 200, "a request shorter than the grace period was cut"
    lines, _ = stream.result()
    assert 1 <= lines < 60, lines
    wait_for(lambda: gw.fake.stats()["in_flight"] == 0, 5, "the cut stream to be cancelled upstream")

    gw.start()
    rows = gw.admin("GET", f"/api/apis/{api['id']}/logs?limit=100").json()["items"]
    ids = {row["request_id"] for row in rows}
    assert ids >= {f"before-{i}" for i in range(5)} | {"short", "long-stream"}, ids
