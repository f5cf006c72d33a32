"""Several nodes, end to end on loopback: real ``twistd -n flm`` processes.

One process (runs today, on SQLite): ``reuse_port`` serves an API, the node lists itself
at ``GET /api/nodes`` and its log rows carry its name.

Two processes on one database with ``reuse_port`` (runs where a database several processes
may share is given: ``FLM_TEST_DATABASE=postgresql://...``, a database this test may fill;
SQLite's data-dir lock rightly refuses two writers on one file): an API created on one
answers on both, a key revoked on one is refused by both within 1 s, a budget is spent
across both.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from flm.config import SettingsError, load_settings
from flm.gateway.reuseport import reuse_port_socket
from tests.e2e.conftest import DEFAULT_MODEL, Gateway, api_url
from tests.fakes.backend import FakeProcess
from tests.flmproc import wait_for

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}


def chat(api: dict[str, Any], key: str) -> int:
    """One request on a new connection (so the kernel may give it to either node)."""
    with httpx.Client(timeout=10) as client:
        return client.post(api_url(api) + "/v1/chat/completions", json=CHAT,
                           headers={"Authorization": f"Bearer {key}"}).status_code


def nodes(gw: Gateway) -> list[dict[str, Any]]:
    response = gw.admin("GET", "/api/nodes")
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_one_node_with_reuse_port_lists_itself_and_stamps_its_rows(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(settings={"reuse_port": True, "node_name": "solo",
                                   "node_heartbeat_s": 0.2})
    api = gw.create_api()
    assert chat(api, api["key"]) == 200
    reuse_port_socket("127.0.0.1", api["port"]).close()  # another process could share it
    wait_for(lambda: [n["apis"] for n in nodes(gw)] == [[api["name"]]], 5,
             "the node to list the API it serves")
    [node] = nodes(gw)
    assert (node["name"], node["status"]) == ("solo", "up")

    def logged() -> list[dict[str, Any]]:
        return gw.admin("GET", f"/api/apis/{api['id']}/logs").json()["items"]
    wait_for(lambda: logged(), 5, "the request's log row")
    assert logged()[0]["node"] == "solo"


def _shared_database() -> str | None:
    url = os.environ.get("FLM_TEST_DATABASE", "")
    if not url.startswith(("postgresql://", "postgres://")):
        return None
    try:
        load_settings({"database": url})
    except SettingsError:
        return None  # this FLM has no PostgreSQL engine yet
    return url


@pytest.fixture
def two_nodes(tmp_path: Path) -> Any:
    database = _shared_database()
    if database is None:
        pytest.skip("needs FLM_TEST_DATABASE=postgresql://... (several processes on one "
                    "database); SQLite allows one FLM per file")
    fake = FakeProcess(str(tmp_path / "fake.log")).start()
    token = f"admin-{uuid.uuid4().hex}"
    made = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            gw = Gateway(tmp_path / name, fake, token=token, settings={
                "database": database, "reuse_port": True, "node_name": name,
                "node_heartbeat_s": 0.2})
            made.append(gw)
            gw.start()
        yield made
    finally:
        for gw in made:
            gw.kill()
            gw.http.close()
        fake.stop()


def _serving(gw: Gateway, api: dict[str, Any]) -> bool:
    return any(api["name"] in n["apis"] for n in nodes(gw) if n["name"] == gw.settings[
        "node_name"])


def test_an_api_created_on_one_node_is_served_by_both(two_nodes: list[Gateway]) -> None:
    a, b = two_nodes
    api = a.create_api()
    started = time.monotonic()
    wait_for(lambda: _serving(b, api), 2, "node b to serve the API")
    assert time.monotonic() - started < 1.5  # 1 s plus a heartbeat
    assert all(chat(api, api["key"]) == 200 for _ in range(20))


def test_a_key_revoked_on_one_node_is_refused_by_both_within_a_second(
        two_nodes: list[Gateway]) -> None:
    a, b = two_nodes
    api = a.create_api()
    wait_for(lambda: _serving(b, api), 2, "node b to serve the API")
    made = a.admin("POST", f"/api/apis/{api['id']}/keys", {"name": "ci"}).json()
    wait_for(lambda: all(chat(api, made["key"]) == 200 for _ in range(6)), 2,
             "both nodes to take the new key")
    assert b.admin("DELETE", f"/api/apis/{api['id']}/keys/ci").status_code == 200
    time.sleep(1.0)  # the contract's bound, not a wait for a state
    # 401, then 429 once this address has sent too many wrong keys: refused either way
    assert {chat(api, made["key"]) for _ in range(20)} <= {401, 429}


def test_a_budget_is_spent_across_both(two_nodes: list[Gateway]) -> None:
    a, b = two_nodes
    api = a.create_api()
    wait_for(lambda: _serving(b, api), 2, "node b to serve the API")
    key = a.admin("POST", f"/api/apis/{api['id']}/keys",
                  {"name": "team", "daily_token_budget": 50}).json()
    wait_for(lambda: chat(api, key["key"]) in (200, 429), 2, "the key on both")
    statuses = [chat(api, key["key"]) for _ in range(60)]
    assert 429 in statuses
    time.sleep(1.0)  # each node reads the others' spending once a second
    assert [chat(api, key["key"]) for _ in range(10)] == [429] * 10
