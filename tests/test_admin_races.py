"""Admin operations racing each other over the real store (SQLite behind a real adbapi
thread): a rotate or a start whose API is deleted meanwhile, two rotates at once, a PATCH
against a delete.

Where the interleaving matters it is forced, not hoped for: the other operation runs to
its end just before the racing operation's write reaches the store (``before_write``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from flm import keys
from flm.admin.apis import Apis
from flm.admin.errors import AdminError
from flm.gateway.admission import BackendGate
from flm.gateway.registry import Registry
from flm.gateway.resource import Upstream
from flm.store import Store
from tests.test_admin_apis import FakeModels, free_port


def before_write(store: Store, method: str, other: Callable[[], Awaitable[Any]]) -> None:
    """The next ``store.<method>`` call first lets ``other`` run to its end."""
    real = getattr(store, method)

    async def hooked(*args: Any, **kwargs: Any) -> Any:
        setattr(store, method, real)
        await other()
        return await real(*args, **kwargs)
    setattr(store, method, hooked)


def listening(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class RaceTestCase(TestCase):
    def setUp(self) -> None:
        self.store = Store(Path(self.mktemp()) / "flm.sqlite3")
        self.store.startService()
        self.addCleanup(self.store.stopService)
        upstream = Upstream(agent=None, base_url=b"http://backend", paths=frozenset(),  # type: ignore[arg-type]
                            gate=BackendGate(1, reactor), clock=reactor, record=lambda row: None)
        self.registry = Registry(self.store, upstream, reactor=reactor, cache_size=10,
                                 grace_period=0.0, site_limits={"max_body": 1024, "idle_timeout": 75.0})
        self.registry.startService()
        self.addCleanup(self.registry.stopService)  # closes any port left open
        self.apis = Apis(self.store, self.registry, FakeModels(), api_host="127.0.0.1",
                         first_port=free_port(), reserved_ports=set())

    async def create(self, name: str, start: bool) -> dict[str, Any]:
        return await self.apis.create({"name": name, "model": "llama3.2", "start": start,
                                       "port": free_port()})

    async def assert_not_found(self, operation: Awaitable[Any]) -> None:
        try:
            await operation
        except AdminError as e:
            self.assertEqual((e.status, e.code), (404, "not_found"))
        else:
            self.fail("the operation on a deleted API did not fail")


class RotateAgainstDeleteTests(RaceTestCase):
    async def test_a_rotate_whose_api_is_deleted_meanwhile_is_a_404(self) -> None:
        api = await self.create("chat", start=True)
        before_write(self.store, "update_key", lambda: self.apis.delete("chat"))
        await self.assert_not_found(self.apis.rotate_key("chat"))
        self.assertIsNone(await self.store.get_api(api["id"]))
        self.assertEqual(self.registry.runtimes, {})
        self.assertIsNone(self.registry.cache.by_port(api["port"]))
        self.assertFalse(listening(api["port"]))

    async def test_a_delete_after_a_rotate_leaves_nothing(self) -> None:
        api = await self.create("chat", start=True)
        before_write(self.store, "delete_api", lambda: self.apis.rotate_key("chat"))
        await self.apis.delete("chat")
        self.assertIsNone(await self.store.get_api(api["id"]))
        self.assertEqual(self.registry.runtimes, {})
        self.assertIsNone(self.registry.cache.by_port(api["port"]))
        self.assertFalse(listening(api["port"]))


class StartAgainstDeleteTests(RaceTestCase):
    async def test_a_start_whose_api_is_deleted_meanwhile_leaves_no_port_open(self) -> None:
        api = await self.create("chat", start=False)
        before_write(self.store, "update_api", lambda: self.apis.delete("chat"))
        await self.assert_not_found(self.apis.start("chat"))
        self.assertEqual(self.registry.runtimes, {})
        self.assertFalse(listening(api["port"]))


class PatchAgainstDeleteTests(RaceTestCase):
    async def test_a_patch_whose_api_is_deleted_meanwhile_is_a_404(self) -> None:
        api = await self.create("chat", start=True)
        before_write(self.store, "update_api", lambda: self.apis.delete("chat"))
        await self.assert_not_found(self.apis.update("chat", {"max_queue": 5}))
        self.assertIsNone(await self.store.get_api(api["id"]))
        self.assertEqual(self.registry.runtimes, {})


class ConcurrentRotateTests(RaceTestCase):
    async def test_after_concurrent_rotates_the_proxy_checks_the_stored_key(self) -> None:
        api = await self.create("chat", start=True)
        rotated = await gatherResults([Deferred.fromCoroutine(self.apis.rotate_key("chat"))
                                       for _ in range(4)])
        stored = await self.store.get_api(api["id"])
        cached = self.registry.cache.by_port(api["port"])
        self.assertEqual(cached.key_hash, stored.key_hash)
        # the key that works is one of those handed out, and only that one
        working = [r["key"] for r in rotated if keys.matches(r["key"].encode(), stored.key_hash)]
        self.assertEqual(len(working), 1)
        self.assertEqual(self.registry.runtimes[api["id"]].config.key_hash, stored.key_hash)
