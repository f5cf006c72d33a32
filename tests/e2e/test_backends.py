"""Several backends end to end: ``twistd -n flm`` in front of three fake model servers on
loopback -- balance, a backend killed under load, recovery, model-aware routing, a stream
cut after its first byte, all down, and affinity."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.fakes.backend import FakeProcess

MODEL = "llama3.2:1b"
SETTINGS = {"backend_probe_interval_s": 0.2, "model_cache_ttl_s": 0.5}


@pytest.fixture
def three(gateway_factory: Callable[..., Gateway], tmp_path: Any
          ) -> Iterator[tuple[Gateway, list[FakeProcess]]]:
    """A gateway whose ``default`` backend is one fake, with two more fakes added as
    ``b1`` and ``b2``; every backend takes 2 requests at once."""
    gw = gateway_factory(settings=SETTINGS, args=("--backend-max-concurrent", "2"))
    fakes = [gw.fake]
    try:
        for name in ("b1", "b2"):
            fake = FakeProcess(str(tmp_path / f"{name}.log")).start()
            fakes.append(fake)
            r = gw.admin("POST", "/api/backends", {"name": name, "url": fake.url,
                                                   "max_concurrent": 2})
            assert r.status_code == 201, r.text
        wait_for(lambda: all(b["state"] == "up" for b in backends(gw).values()), 10,
                 "every backend to be up")
        yield gw, fakes
    finally:
        for fake in fakes[1:]:
            fake.stop()


def backends(gw: Gateway) -> dict[str, dict[str, Any]]:
    r = gw.admin("GET", "/api/backends")
    assert r.status_code == 200, r.text
    return {b["name"]: b for b in r.json()["items"]}


def chats(fake: FakeProcess) -> int:
    """Chat requests the fake saw (probes and model lists are not counted)."""
    return int(fake.stats()["by_path"].get("/v1/chat/completions", 0))


def chat(api: dict[str, Any], *, headers: dict[str, str] | None = None, stream: bool = False,
         user: str | None = None, timeout: float = 20) -> httpx.Response:
    body: dict[str, Any] = {"model": "x", "messages": [{"role": "user", "content": "hi"}],
                            "stream": stream}
    if user is not None:
        body["user"] = user
    return httpx.post(api_url(api) + "/v1/chat/completions", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {api['key']}", **(headers or {})})


def many(api: dict[str, Any], n: int, **kw: Any) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: chat(api, **kw), range(n)))


def test_balance_over_three(three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    api = gw.create_api(max_concurrent=6, max_queue=100)
    responses = many(api, 18, headers={"X-Fake-Delay": "0.2"})
    assert [r.status_code for r in responses] == [200] * 18
    used = Counter(r.headers["x-flm-backend"] for r in responses)
    assert set(used) == {"default", "b1", "b2"}, used
    assert all(r.headers["x-flm-attempts"] == "1" for r in responses)
    assert sum(chats(f) for f in fakes) == 18  # each sent once
    wait_for(lambda: len(gw.admin("GET", f"/api/apis/{api['id']}/logs?limit=50")
                         .json()["items"]) == 18, 5, "18 log rows")
    rows = gw.admin("GET", f"/api/apis/{api['id']}/logs?limit=50").json()["items"]
    assert {r["backend"] for r in rows} == {"default", "b1", "b2"}
    assert {r["attempts"] for r in rows} == {1}


def test_one_killed_under_load_every_request_answered_then_recovery(
        three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    api = gw.create_api(max_concurrent=6, max_queue=100)
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(many, api, 24, headers={"X-Fake-Delay": "0.5"})
        wait_for(lambda: fakes[1].stats()["in_flight"] >= 1, 10, "b1 to be serving")
        port = fakes[1].port
        fakes[1].proc.kill()  # mid-load, requests at it
        fakes[1].proc.wait(5)
        responses = load.result(60)
    assert [r.status_code for r in responses] == [200] * 24, [r.text for r in responses
                                                               if r.status_code != 200]
    assert any(int(r.headers["x-flm-attempts"]) > 1 for r in responses)
    wait_for(lambda: backends(gw)["b1"]["state"] == "down", 10, "b1 to be down")
    b1 = backends(gw)["b1"]
    assert b1["last_error"] and b1["checked_at"]
    health = gw.admin("GET", "/health")
    assert (health.status_code, health.json()["status"]) == (200, "degraded"), health.text
    # nothing goes to a backend known down while others are up
    assert {r.headers["x-flm-backend"] for r in many(api, 6)} <= {"default", "b2"}
    fakes[1].proc = None
    fakes[1].start(port)
    wait_for(lambda: backends(gw)["b1"]["state"] == "up", 10, "b1 to be up again")
    assert gw.admin("GET", "/health").json()["status"] == "ok"


def test_models_route_to_the_backends_that_list_them(
        three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    fakes[2].call("POST", "/_fake/models", {"models": ["special:1b", MODEL]})
    wait_for(lambda: "special:1b" in (backends(gw)["b2"]["models"] or []), 10,
             "b2's model list to be fetched")
    api = gw.create_api(model="special:1b", max_concurrent=4)
    responses = many(api, 8)
    assert {r.headers["x-flm-backend"] for r in responses} == {"b2"}
    listing = gw.admin("GET", "/api/models").json()["models"]
    special = [m for m in listing if m["name"] == "special:1b"]
    assert special and special[0]["backends"] == ["b2"], listing


def test_a_stream_cut_after_its_first_byte_is_not_retried(
        three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    api = gw.create_api(backends=["b1", "b2"])
    for fake in fakes[1:]:
        fake.configure(fail="die_midstream", paths=["/v1/chat/completions"])
    r = chat(api, stream=True)
    assert r.status_code == 200
    assert r.headers["x-flm-attempts"] == "1"
    events = r.text.strip().split("\n\n")
    assert events[-1].startswith("event: error"), r.text
    json.loads(events[-1].split("data: ", 1)[1])  # well-formed
    assert sum(chats(f) for f in fakes[1:]) == 1


def test_all_down_is_502_after_trying_each(three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    api = gw.create_api(backends=["b1", "b2"])
    for fake in fakes[1:]:
        fake.stop()
    r = chat(api)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "backend_unavailable"
    assert r.headers["x-flm-attempts"] == "2"
    wait_for(lambda: {backends(gw)[n]["state"] for n in ("b1", "b2")} == {"down"}, 10,
             "both down")
    assert gw.admin("GET", "/health").status_code == 503
    r = chat(api)  # still tried rather than refused: a probe can be wrong
    assert r.status_code == 502 and r.headers["x-flm-attempts"] == "2"


def test_retryable_status_goes_elsewhere_other_statuses_back_as_they_are(
        three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    api = gw.create_api(backends=["b1", "b2"])
    fakes[1].configure(fail="status:503", paths=["/v1/chat/completions"])
    for _ in range(4):
        r = chat(api)
        assert r.status_code == 200 and r.headers["x-flm-backend"] == "b2", r.text
    fakes[1].configure(fail="status:400", paths=["/v1/chat/completions"])
    fakes[2].configure(fail="status:400", paths=["/v1/chat/completions"])
    r = chat(api)
    assert r.status_code == 400 and r.headers["x-flm-attempts"] == "1"


def test_affinity_kept_then_given_up_under_load(
        three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    api = gw.create_api(affinity="user", max_concurrent=8)
    first = chat(api, user="alice").headers["x-flm-backend"]
    for _ in range(6):
        assert chat(api, user="alice").headers["x-flm-backend"] == first
        assert chat(api, headers={"X-Session-Id": "s1"}).status_code == 200
    # fill alice's backend through another API that may only use it
    blocker = gw.create_api(backends=[first], max_concurrent=2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = [pool.submit(chat, blocker, headers={"X-Fake-Delay": "2"}) for _ in range(2)]
        wait_for(lambda: backends(gw)[first]["in_flight"] == 2, 10, "the backend to be full")
        moved = chat(api, user="alice")
        assert moved.status_code == 200
        assert moved.headers["x-flm-backend"] != first
        assert [f.result(30).status_code for f in slow] == [200, 200]


def test_backends_admin_api(three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three
    r = gw.admin("POST", "/api/backends", {"name": "b1", "url": fakes[1].url})
    assert r.status_code == 409
    r = gw.admin("POST", "/api/backends", {"name": "bad", "url": "localhost:1"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("url:")
    r = gw.admin("POST", "/api/backends", {"name": "x", "url": fakes[1].url, "colour": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_field"
    api = gw.create_api(backends=["b2"])
    r = gw.admin("DELETE", "/api/backends/b2")
    assert r.status_code == 409, r.text
    r = gw.admin("PATCH", "/api/backends/b1", {"weight": 3, "enabled": False})
    assert (r.status_code, r.json()["weight"], r.json()["enabled"]) == (200, 3, False)
    assert gw.admin("DELETE", "/api/backends/b1").status_code == 204
    assert gw.admin("GET", "/api/backends/b1").status_code == 404
    r = gw.admin("POST", "/api/apis", {"name": "nob", "model": MODEL, "backends": ["nope"]})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("backends:")
    shown = gw.admin("GET", f"/api/apis/{api['id']}").json()
    assert (shown["backends"], shown["affinity"]) == (["b2"], None)
    metrics = gw.admin("GET", "/metrics").text
    assert 'flm_backend_up{backend="b2"}' in metrics


def test_cli_backends(three: tuple[Gateway, list[FakeProcess]], capsys: Any,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    from flm.cli import main
    gw, fakes = three
    for name in ("FLM_ADMIN_TOKEN", "FLM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)

    def flm(*argv: str, code: int = 0) -> str:
        got = main(["--url", gw.admin_url, "--token", gw.token, "--timeout", "10", *argv])
        out, err = capsys.readouterr()
        assert got == code, (out, err)
        return out + err

    listed = flm("backends", "list")
    assert "default" in listed and "b1" in listed and "up" in listed
    data = json.loads(flm("backends", "add", "b3", fakes[1].url, "--kind", "openai",
                          "--weight", "2", "--json"))
    assert (data["name"], data["kind"], data["weight"], data["max_concurrent"]) == \
        ("b3", "openai", 2, 4)
    assert "weight" in flm("backends", "show", "b3")
    data = json.loads(flm("backends", "update", "b3", "--enabled", "false", "--json"))
    assert data["enabled"] is False
    assert "Removed backend b3" in flm("backends", "remove", "b3")
    assert "default" in flm("backends", "remove", "default", code=1)
    assert "b3" not in flm("backends", "list")


def test_pulls_go_to_every_ollama_backend_or_the_one_named(
        three: tuple[Gateway, list[FakeProcess]]) -> None:
    gw, fakes = three

    def done(job: str) -> bool:
        state = gw.admin("GET", f"/api/models/pulls/{job}").json()
        assert state["status"] != "error", state
        return bool(state["status"] == "done")

    def names(fake: FakeProcess) -> set[str]:
        return {m["name"] for m in fake.call("GET", "/api/tags")["models"]}

    r = gw.admin("POST", "/api/models/pull", {"name": "everywhere:1b"})
    assert r.status_code == 202, r.text
    jobs = r.json()["jobs"]
    assert sorted(j["backend"] for j in jobs) == ["b1", "b2", "default"]
    for j in jobs:
        wait_for(lambda j=j: done(j["job"]), 10, "the pull to finish")
    assert all("everywhere:1b" in names(f) for f in fakes)
    r = gw.admin("POST", "/api/models/pull", {"name": "one:1b", "backend": "b1"})
    assert r.status_code == 202 and [j["backend"] for j in r.json()["jobs"]] == ["b1"]
    wait_for(lambda: done(r.json()["job"]), 10, "the pull to finish")
    assert ["one:1b" in names(f) for f in fakes] == [False, True, False]
    assert gw.admin("POST", "/api/models/pull", {"name": "x:1b", "backend": "nope"}
                    ).status_code == 422
    r = gw.admin("DELETE", "/api/models/everywhere:1b?backend=b2")
    assert r.status_code == 204, r.text
    assert ["everywhere:1b" in names(f) for f in fakes] == [True, True, False]
    assert gw.admin("DELETE", "/api/models/everywhere:1b?backend=nope").status_code == 422


@pytest.mark.parametrize("field, value", [("url", "http://127.0.0.1:9"), ("kind", "openai")])
def test_the_default_backend_refuses_a_new_url_or_kind_and_keeps_its_own(
        gateway: Gateway, field: str, value: str) -> None:
    """--backend* set ``default`` at every start: a PATCH of its url or kind is a 422 that
    changes nothing (it was refused yet saved, found by a newcomer trial)."""
    before = gateway.admin("GET", "/api/backends/default").json()
    answer = gateway.admin("PATCH", "/api/backends/default", {field: value})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["message"].startswith(f"{field}:"), answer.text
    after = gateway.admin("GET", "/api/backends/default").json()
    assert (after["url"], after["kind"], after["updated_at"]) == (
        before["url"], before["kind"], before["updated_at"])
