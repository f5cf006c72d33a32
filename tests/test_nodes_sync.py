"""Change propagation between two nodes on one database, socket-free and on the clock.

Two :class:`KeysHarness` share one SQLite file (two stores, two registries, two admin
apps): what node A's admin API changes is in effect on node B after one poll of B's
:class:`NodeSync` (0.25 s of B's clock), and A applying its own change again is a no-op.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from flm.admin.backends import Backends
from flm.backends import backend_base_url
from flm.backends.health import BackendHealth
from flm.gateway.admission import BackendGate
from flm.gateway.fleet import Fleet, Member
from flm.gateway.registry import Registry
from flm.nodes.sync import NodeSync
from flm.records import BackendRecord
from tests.keys_harness import KeysHarness

POLL = 0.25


def node(case: SynchronousTestCase, other: KeysHarness | None = None) -> KeysHarness:
    """A node: the harness, plus a fleet, its backends and a started NodeSync."""
    h = KeysHarness(case, directory=None if other is None else other.dir)
    reactor = h.reactor

    def make_member(record: BackendRecord) -> Member:
        return Member(record.name, record.kind,
                      backend_base_url(record.kind, record.url).encode(), frozenset(),
                      BackendGate(record.max_concurrent, reactor), BackendHealth(reactor),
                      max_concurrent=record.max_concurrent, weight=record.weight,
                      enabled=record.enabled)
    h.fleet = Fleet(reactor)  # type: ignore[attr-defined]
    h.backends = Backends(h.store, h.fleet, make_member)  # type: ignore[attr-defined]
    h.sync = NodeSync(h.store, h.registry, h.backends, h.admin.changes,  # type: ignore
                      reactor, POLL)
    h.sync.startService()
    case.addCleanup(h.sync.stopService)
    return h


class PropagationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a = node(self)
        self.b = node(self, self.a)
        self.poll_both()  # both have read the (empty) config once

    def poll_both(self) -> None:
        self.a.advance(POLL)
        self.b.advance(POLL)

    def runtime(self, h: KeysHarness, api: dict[str, Any]) -> Any:
        return h.registry.runtimes.get(api["id"])

    def test_an_api_created_on_one_node_answers_on_the_other_after_one_poll(self) -> None:
        api = self.a.create_api()
        self.assertIsNone(self.runtime(self.b, api))
        self.b.advance(POLL)
        self.assertIsNotNone(self.runtime(self.b, api))
        self.assertEqual(self.b.reactor.listening(), [api["port"]])
        self.assertEqual(self.b.send(api, api["key"]).status, 200)

    def test_a_revoked_key_is_refused_on_the_other_node_after_one_poll(self) -> None:
        api = self.a.create_api()
        key = self.a.ok("POST", f"/api/apis/{api['id']}/keys", {"name": "ci"}, status=201)
        self.b.advance(POLL)
        self.assertEqual(self.b.send(api, key["key"]).status, 200)
        self.a.ok("DELETE", f"/api/apis/{api['id']}/keys/ci")
        self.assertEqual(self.b.send(api, key["key"]).status, 200)  # not polled yet
        self.b.advance(POLL)
        self.assertEqual(self.b.send(api, key["key"]).status, 401)
        self.assertEqual(self.b.send(api, api["key"]).status, 200)

    def test_a_rotated_key_works_on_the_other_node(self) -> None:
        api = self.a.create_api()
        self.b.advance(POLL)
        rotated = self.a.ok("POST", f"/api/apis/{api['id']}/rotate-key")
        self.b.advance(POLL)
        self.assertEqual(self.b.send(api, rotated["key"]).status, 200)
        self.assertEqual(self.b.send(api, api["key"]).status, 401)

    def test_limits_stop_start_move_and_delete_follow(self) -> None:
        api = self.a.create_api()
        self.b.advance(POLL)
        self.a.ok("PATCH", f"/api/apis/{api['id']}", {"max_concurrent": 3, "max_queue": 7,
                                                        "rate_limit_rpm": 60})
        self.b.advance(POLL)
        runtime = self.runtime(self.b, api)
        self.assertEqual((runtime.config.max_concurrent, runtime.config.max_queue), (3, 7))
        self.assertEqual(runtime.bucket.rpm, 60)

        self.a.ok("POST", f"/api/apis/{api['id']}/stop")
        self.b.advance(POLL)
        self.assertIsNone(self.runtime(self.b, api))
        self.a.ok("POST", f"/api/apis/{api['id']}/start")
        self.b.advance(POLL)
        self.assertIsNotNone(self.runtime(self.b, api))

        port = api["port"] + 1
        self.a.ok("PATCH", f"/api/apis/{api['id']}", {"port": port})
        self.b.advance(POLL)
        self.assertEqual(self.runtime(self.b, api).port, port)
        self.assertEqual(self.b.reactor.listening()[-1], port)

        self.a.call("DELETE", f"/api/apis/{api['id']}")
        self.b.advance(POLL)
        self.assertIsNone(self.runtime(self.b, api))

    def test_a_node_applying_its_own_change_again_changes_nothing(self) -> None:
        api = self.a.create_api()
        before = self.runtime(self.a, api)
        listener, ring = before.listener, before.keyring
        applied = self.a.sync.applied
        self.a.advance(POLL)
        self.assertEqual(self.a.sync.applied, applied + 1)  # it did read the new version
        after = self.runtime(self.a, api)
        self.assertIs(after, before)
        self.assertIs(after.listener, listener)
        self.assertIs(after.keyring, ring)
        self.assertEqual(self.a.reactor.listening(), [api["port"]])
        self.a.advance(POLL)  # nothing moved: not even a reload
        self.assertEqual(self.a.sync.applied, applied + 1)

    def test_another_nodes_change_never_writes_status(self) -> None:
        api = self.a.create_api()
        self.b.reactor.busy_ports.add(api["port"])  # B cannot open the port
        self.b.advance(POLL)
        self.assertIsNone(self.runtime(self.b, api))
        self.assertEqual(self.a.ok("GET", f"/api/apis/{api['id']}")["status"], "running")

    def test_a_node_starting_where_the_port_is_taken_leaves_the_status_alone(self) -> None:
        api = self.a.create_api()
        self.patch(Registry, "shared", True)  # as on PostgreSQL
        self.b.reactor.busy_ports.add(api["port"])
        self.b.restart()  # restores the running APIs: this one cannot listen here
        self.assertIsNone(self.runtime(self.b, api))
        self.assertEqual(self.a.ok("GET", f"/api/apis/{api['id']}")["status"], "running")

    def test_start_where_it_runs_puts_right_a_stored_error(self) -> None:
        api = self.a.create_api()
        self.successResultOf(self.a.store.update_api(api["id"], {
            "status": "error", "status_reason": "port 8080 is in use"}))
        started = self.a.ok("POST", f"/api/apis/{api['id']}/start")
        self.assertEqual((started["status"], started["status_reason"]), ("running", None))

    def test_backends_follow(self) -> None:
        created = self.successResultOf(self.a.backends.create(  # the admin operation
            {"name": "gpu2", "url": "http://10.0.0.2:11434", "max_concurrent": 2}))
        self.assertEqual(created["name"], "gpu2")
        self.b.advance(POLL)
        self.assertEqual(self.b.fleet.members["gpu2"].max_concurrent, 2)
        self.successResultOf(self.a.backends.update("gpu2", {"weight": 5, "enabled": False}))
        self.b.advance(POLL)
        member = self.b.fleet.members["gpu2"]
        self.assertEqual((member.weight, member.enabled), (5, False))
        self.successResultOf(self.a.backends.update("gpu2", {"url": "http://10.0.0.3:11434"}))
        self.b.advance(POLL)
        self.assertEqual(self.b.fleet.members["gpu2"].base_url, b"http://10.0.0.3:11434")
        self.successResultOf(self.a.backends.delete("gpu2"))
        self.b.advance(POLL)
        self.assertNotIn("gpu2", self.b.fleet.members)

    def test_a_read_that_may_predate_a_local_change_is_not_applied(self) -> None:
        api = self.a.create_api()
        self.b.admin.changes.begin()  # an admin change of B's under way
        self.b.advance(POLL)
        self.assertIsNone(self.runtime(self.b, api))
        self.b.admin.changes.end(None)
        self.b.advance(POLL)
        self.assertIsNotNone(self.runtime(self.b, api))

    def test_wake_polls_at_once(self) -> None:
        api = self.a.create_api()
        self.b.sync.wake()
        self.b.advance(0)
        self.assertIsNotNone(self.runtime(self.b, api))

    def test_a_read_during_which_a_local_change_ran_is_not_applied(self) -> None:
        api = self.a.create_api()
        read = self.b.store.config_snapshot

        async def read_while_b_changes() -> Any:
            snapshot = await read()
            self.b.admin.changes.begin()  # B's admin changed something meanwhile, and
            self.b.admin.changes.end(None)  # finished before the read came back
            return snapshot
        self.b.store.config_snapshot = read_while_b_changes  # type: ignore[method-assign]
        self.b.advance(POLL)
        self.assertIsNone(self.runtime(self.b, api))
        self.b.store.config_snapshot = read  # type: ignore[method-assign]
        self.b.advance(POLL)
        self.assertIsNotNone(self.runtime(self.b, api))

    def test_a_database_outage_is_logged_once_and_its_end_once(self) -> None:
        from twisted.logger import globalLogPublisher
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        version = self.b.store.config_version

        async def away() -> int:
            raise OSError("the connection is lost")
        self.b.store.config_version = away  # type: ignore[method-assign]
        for _ in range(8):
            self.b.advance(POLL)
        self.assertTrue(self.b.sync.failing)
        self.flushLoggedErrors(OSError)
        self.b.store.config_version = version  # type: ignore[method-assign]
        api = self.a.create_api()
        self.b.advance(POLL)
        self.assertFalse(self.b.sync.failing)
        self.assertIsNotNone(self.runtime(self.b, api))
        said = [e["log_format"] for e in seen if e.get("log_namespace") == "flm.nodes.sync"]
        self.assertEqual(len(said), 2, said)
        self.assertIn("works again", said[1])
