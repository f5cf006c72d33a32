"""Nodes: each upserts its row at start and every heartbeat, is listed ``gone`` after a
clean stop or three missed heartbeats; ``GET /api/nodes``; log rows carry the node."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from flm.admin.apis import Apis
from flm.admin.app import AdminApp
from flm.nodes.heartbeat import Heartbeat, list_nodes
from flm.observe.logbuffer import LogBuffer
from flm.store import logs
from tests.test_admin_apis import BASE, TOKEN, FakeModels, InlineReactor, healthy, inline_store

T0 = 1773576000.0  # 2026-03-15T12:00:00Z


class NodeRowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flm-test-nodes-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.reactor = InlineReactor()
        self.reactor.advance(T0)
        self.store = inline_store(self.dir / "flm.db", self.reactor)
        self.addCleanup(self.store.stopService)
        self.serving = ["chat"]

    def heartbeat(self, name: str) -> Heartbeat:
        beat = Heartbeat(self.store, name, self.reactor, 5.0, lambda: self.serving)
        beat.startService()
        return beat

    def listed(self) -> list[dict]:
        return self.successResultOf(list_nodes(self.store, self.reactor.seconds()))["items"]

    def test_a_node_is_up_at_start_and_gone_after_a_clean_stop(self) -> None:
        beat = self.heartbeat("gpu-a:8420")
        self.assertEqual(self.listed(), [
            {"name": "gpu-a:8420", "status": "up", "started_at": "2026-03-15T12:00:00.000Z",
             "last_seen": "2026-03-15T12:00:00.000Z", "apis": ["chat"]}])
        self.reactor.advance(5)
        [row] = self.listed()
        self.assertEqual((row["last_seen"], row["apis"]), ("2026-03-15T12:00:05.000Z",
                                                           ["chat"]))
        self.serving = ["chat", "code"]  # an API started: listed within a check, not a beat
        self.reactor.advance(0.25)
        [row] = self.listed()
        self.assertEqual((row["last_seen"], row["apis"]), ("2026-03-15T12:00:05.250Z",
                                                           ["chat", "code"]))
        self.successResultOf(beat.stopService())
        [row] = self.listed()
        self.assertEqual((row["status"], row["apis"]), ("gone", []))

    def test_a_node_silent_for_three_heartbeats_is_gone(self) -> None:
        self.heartbeat("gpu-a:8420")
        other = self.heartbeat("gpu-b:8420")
        other._loop.stop()  # b stops beating (killed, or cut off)
        self.reactor.advance(15)
        self.assertEqual([(n["name"], n["status"]) for n in self.listed()],
                         [("gpu-a:8420", "up"), ("gpu-b:8420", "up")])
        self.reactor.advance(5)
        self.assertEqual([(n["name"], n["status"]) for n in self.listed()],
                         [("gpu-a:8420", "up"), ("gpu-b:8420", "gone")])

    def test_get_api_nodes_needs_the_token_and_lists_them(self) -> None:
        self.heartbeat("gpu-a:8420")
        apis = Apis(self.store, None, FakeModels(), api_host="127.0.0.1",  # type: ignore
                    first_port=47500, reserved_ports=set())
        app = AdminApp(token=TOKEN, apis=apis, health=healthy,
                       nodes=lambda: list_nodes(self.store, self.reactor.seconds()))
        stub = StubTreq(app.resource())
        anonymous = self.successResultOf(stub.get(BASE + "/api/nodes"))
        self.assertEqual(anonymous.code, 401)
        response = self.successResultOf(stub.get(
            BASE + "/api/nodes", headers={"Authorization": f"Bearer {TOKEN}"}))
        self.assertEqual(response.code, 200)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual([n["name"] for n in body["items"]], ["gpu-a:8420"])

    def test_log_rows_carry_the_node_that_served_them(self) -> None:
        api = self.successResultOf(self.store.create_api({
            "name": "chat", "host": "127.0.0.1", "port": 47501, "model": "m",
            "status": "stopped", "key_hash": "h", "key_prefix": "p", "max_concurrent": 1,
            "max_queue": 1, "queue_timeout_s": 1.0, "upstream_timeout_s": 1.0,
            "rate_limit_rpm": None, "priority": 0, "allow_unknown_model": False}))
        buffer = LogBuffer(self.store, self.reactor)
        row = (api.id, T0, "POST", "/v1/chat/completions", 200, 1, 2, 3, 4, 10, 20, "m",
               1, 2, "r1", None, None, None, "default", 1, "gpu-a:8420")  # as the proxy records it
        buffer.record(row)
        self.successResultOf(buffer.flush())
        items, _ = self.successResultOf(logs.logs_page(self.store, api.id, 10))
        self.assertEqual(items[0]["node"], "gpu-a:8420")
