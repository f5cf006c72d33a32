"""Moving an API (PATCH port or host): the new port opens before the change is stored and
before the old port closes; a failed move changes nothing. Creates without a port that run
at once get different ports (over a real adbapi thread). A host that is not on this
machine is a 422 naming ``host``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.trial.unittest import TestCase

from flm.admin.apis import Apis
from flm.gateway.admission import BackendGate
from flm.gateway.registry import Registry
from flm.gateway.resource import Upstream
from flm.store import Store
from tests.test_admin_apis import AdminTestCase, FakeModels, InlineReactor, free_port


class EventReactor(InlineReactor):
    """Records listens and stops in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int]] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        listener = super().listenTCP(port, factory, backlog, interface)
        self.events.append(("listen", port))

        def stop() -> Deferred[None]:
            self.events.append(("stop", port))
            return succeed(None)
        listener.stopListening = stop
        return listener


class MoveTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.reactor.__class__ = EventReactor
        self.reactor.events = []
        self.old, self.new = free_port(), free_port()
        self.api = self.create("chat", port=self.old)

    def test_the_new_port_opens_before_the_old_closes(self) -> None:
        self.reactor.events.clear()
        status, body, _ = self.call("PATCH", "/api/apis/chat", {"port": self.new})
        self.assertEqual((status, body["port"], body["status"]), (200, self.new, "running"))
        self.assertEqual(self.reactor.events, [("listen", self.new), ("stop", self.old)])
        self.assertEqual(self.registry.cache.by_port(self.new).id, self.api["id"])
        self.assertIsNone(self.registry.cache.by_port(self.old))

    def test_a_move_that_cannot_listen_changes_nothing(self) -> None:
        self.reactor.busy_ports.add(self.new)
        self.reactor.events.clear()
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"port": self.new,
                                                                "max_queue": 5}),
                          409, "port_taken", "port")
        self.assertEqual(self.reactor.events, [])  # the old port was never closed
        status, body, _ = self.call("GET", "/api/apis/chat")
        self.assertEqual((body["port"], body["status"], body["max_queue"]),
                         (self.old, "running", 32))
        self.assertEqual(self.registry.runtimes[self.api["id"]].port, self.old)
        self.assertEqual(self.registry.cache.by_port(self.old).id, self.api["id"])

    def test_a_move_refused_by_the_store_closes_the_new_port(self) -> None:
        other = self.create("other", port=free_port(), start=False)
        self.reactor.events.clear()
        # the name is taken: nothing stored, the port opened for the move is closed again
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"port": self.new,
                                                                "name": "other"}),
                          409, "name_taken", "name")
        self.assertEqual(self.reactor.events, [("listen", self.new), ("stop", self.new)])
        self.assertEqual(self.call("GET", "/api/apis/chat")[1]["port"], self.old)
        self.assertEqual(self.registry.runtimes[self.api["id"]].port, self.old)
        self.assertEqual(other["status"], "stopped")

    def test_a_host_not_on_this_machine_is_a_422_naming_host(self) -> None:
        # 192.0.2.1 is TEST-NET-1: never an address of this machine
        for body in ({"name": "far", "model": "llama3.2", "host": "192.0.2.1", "insecure": True},
                     {"name": "far", "model": "llama3.2", "host": "192.0.2.1", "insecure": True,
                      "port": free_port()}):
            self.assert_error(self.call("POST", "/api/apis", body), 422, "invalid_field",
                              "host")
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"host": "192.0.2.1",
                                                                "insecure": True}),
                          422, "invalid_field", "host")
        self.assertEqual(self.call("GET", "/api/apis/chat")[1]["status"], "running")


class ConcurrentCreateTests(TestCase):
    """Two creates without a port at once, over a real adbapi thread."""

    async def test_two_creates_without_a_port_get_two_ports(self) -> None:
        store = Store(Path(self.mktemp()) / "flm.sqlite3")
        store.startService()
        self.addCleanup(store.stopService)
        upstream = Upstream(agent=None, base_url=b"http://backend", paths=frozenset(),  # type: ignore[arg-type]
                            gate=BackendGate(1, reactor), clock=reactor, record=lambda row: None)
        registry = Registry(store, upstream, reactor=reactor, cache_size=10, grace_period=0.0,
                            site_limits={"max_body": 1024})
        apis = Apis(store, registry, FakeModels(), api_host="127.0.0.1",
                    first_port=free_port(), reserved_ports=set())
        made = await gatherResults([
            Deferred.fromCoroutine(apis.create({"name": f"c{i}", "model": "llama3.2",
                                                "start": False}))
            for i in range(3)])
        self.assertEqual(len({api["port"] for api in made}), 3, made)
