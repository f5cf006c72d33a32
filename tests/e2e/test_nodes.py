"""Several nodes, end to end on loopback: real ``twistd -n flm`` processes.

One process on SQLite: ``reuse_port`` serves an API, the node lists itself at
``GET /api/nodes`` and its log rows carry its name.

Two processes on one PostgreSQL database with ``reuse_port``, on a server of the test's own
(so that it can be restarted; tests/pgcluster.py): an API created on one answers on both, a
key revoked on one is refused by both, a budget is spent across both, PostgreSQL restarted
under load loses no row, a killed node leaves the other answering everything. Which node
answered is read from the log row's ``node``: the kernel spreads new connections over the
listeners of a ``SO_REUSEPORT`` port. The 1 s bound itself is measured in bench/nodes.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from flm.gateway.reuseport import reuse_port_socket
from tests.e2e.conftest import DEFAULT_MODEL, Background, Gateway, api_url
from tests.fakes.backend import FakeProcess
from tests.flmproc import wait_for
from tests.pgcluster import Cluster, server_bin

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


PROPAGATION = 5.0  # a bound for the waits, not the figure (bench/nodes.py measures it)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg")
    if server_bin() is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("CI=true: PostgreSQL's server binaries (pg_ctl) are needed")
        pytest.skip("no PostgreSQL server binaries (pg_ctl) here")
    server = Cluster().start()
    try:
        yield server
    finally:
        server.stop()


class Nodes:
    """Two FLM nodes, ``a`` and ``b``, on one fresh database, one fake, one admin token."""

    def __init__(self, tmp: Path, cluster: Cluster) -> None:
        import psycopg
        name = f"flm_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.fake = FakeProcess(str(tmp / "fake.log")).start()
        token = f"admin-{uuid.uuid4().hex}"
        self.all: list[Gateway] = []
        for node in ("a", "b"):
            (tmp / node).mkdir()
            self.all.append(Gateway(tmp / node, self.fake, token=token, settings={
                "database": cluster.url(name), "reuse_port": True, "node_name": node,
                "node_heartbeat_s": 0.2}))
        for gw in self.all:
            gw.start()
        self.a, self.b = self.all

    def close(self) -> None:
        for gw in self.all:
            gw.kill()
            gw.http.close()
        self.fake.stop()

    def logs(self, api: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
        response = self.a.admin("GET", f"/api/apis/{api['id']}/logs?limit=500{query}")
        assert response.status_code == 200, response.text
        return response.json()["items"]

    def serve_on_both(self, api: dict[str, Any]) -> int:
        """New connections until both nodes have logged a request of ``api``, then until
        every request sent is logged; how many were sent."""
        sent = []

        def both() -> bool:
            sent.extend(chat(api, api["key"]) for _ in range(8))
            assert set(sent) == {200}, sent
            return {row["node"] for row in self.logs(api)} == {"a", "b"}
        wait_for(both, 20, "both nodes to answer on the shared port", interval=0.2)
        wait_for(lambda: len(self.logs(api)) == len(sent), PROPAGATION, "every request logged")
        return len(sent)


@pytest.fixture
def two_nodes(tmp_path: Path, cluster: Cluster) -> Iterator[Nodes]:
    pair = Nodes(tmp_path, cluster)
    try:
        yield pair
    finally:
        pair.close()


def listed(gw: Gateway) -> dict[str, str]:
    return {n["name"]: n["status"] for n in nodes(gw)}


def test_both_nodes_list_each_other_up(two_nodes: Nodes) -> None:
    for gw in two_nodes.all:
        wait_for(lambda: listed(gw) == {"a": "up", "b": "up"}, PROPAGATION, "both nodes up")


def test_an_api_created_on_one_node_answers_on_both(two_nodes: Nodes) -> None:
    api = two_nodes.a.create_api()
    two_nodes.serve_on_both(api)
    assert two_nodes.b.admin("GET", f"/api/apis/{api['id']}").json()["name"] == api["name"]


def test_a_key_revoked_on_one_node_is_refused_by_both(two_nodes: Nodes) -> None:
    api = two_nodes.a.create_api()
    two_nodes.serve_on_both(api)
    assert two_nodes.b.admin("DELETE", f"/api/apis/{api['id']}/keys/default").status_code == 200
    # 401, then 429 once this address has sent too many wrong keys: refused either way
    wait_for(lambda: {chat(api, api["key"]) for _ in range(16)} <= {401, 429}, PROPAGATION,
             "the revoked key refused by both nodes")


def test_a_budget_is_spent_across_both_nodes(two_nodes: Nodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    api = a.create_api()
    two_nodes.serve_on_both(api)
    with httpx.Client(timeout=10) as client:  # what one request costs, in the fake's tokens
        cost = client.post(api_url(api) + "/v1/chat/completions", json=CHAT, headers={
            "Authorization": f"Bearer {api['key']}"}).json()["usage"]["total_tokens"]
    made = a.admin("POST", f"/api/apis/{api['id']}/keys",
                   {"name": "team", "daily_token_budget": 10 * cost})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    wait_for(lambda: chat(api, key) == 200, PROPAGATION, "the new key on the node asked")
    answered = [200]
    while answered[-8:] != [429] * 8 and len(answered) < 80:
        answered.append(chat(api, key))
    assert answered[-8:] == [429] * 8, answered

    def tokens_logged() -> int:
        return sum(r["prompt_tokens"] + r["completion_tokens"]
                   for r in two_nodes.logs(api, "&key=team") if r["status"] == 200)
    wait_for(lambda: tokens_logged() == cost * answered.count(200), PROPAGATION,
             "every answered request logged")
    assert {r["node"] for r in two_nodes.logs(api, "&key=team")} == {"a", "b"}
    usage = b.admin("GET", f"/api/apis/{api['id']}/keys/team").json()["usage"]
    assert usage["tokens_today"] == tokens_logged()  # exact: no charge lost or doubled
    # a request that starts within budget finishes: 10 fit; a node may admit one more
    # before it hears of the other's last charge
    assert 10 <= answered.count(200) <= 10 + len(two_nodes.all), answered


def test_postgresql_restarted_under_load_loses_no_row(two_nodes: Nodes, cluster: Cluster) -> None:
    api = two_nodes.a.create_api()
    before = two_nodes.serve_on_both(api)
    load = Background(lambda: [chat(api, api["key"]) for _ in range(150)])
    cluster.restart()
    statuses = load.result(60)
    assert statuses == [200] * len(statuses)  # served from each node's cached config

    def rows() -> int:
        response = two_nodes.a.admin("GET", f"/api/apis/{api['id']}/logs?limit=500")
        return len(response.json()["items"]) if response.status_code == 200 else -1
    wait_for(lambda: rows() == before + len(statuses), 30, "every row written after the restart")


def test_a_killed_node_leaves_the_other_answering_everything(two_nodes: Nodes) -> None:
    api = two_nodes.a.create_api()
    two_nodes.serve_on_both(api)
    two_nodes.b.kill()
    assert [chat(api, api["key"]) for _ in range(40)] == [200] * 40
    wait_for(lambda: listed(two_nodes.a).get("b") == "gone", PROPAGATION, "node b listed gone")
