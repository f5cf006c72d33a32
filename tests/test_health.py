"""``/health``'s parts: the backend probe wants a 2xx, the database check really writes."""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flm.observe.health import BackendProbe, DatabaseCheck
from flm.store import Store
from tests.pg import OnPostgres, OnSQLite


class Answer(Resource):
    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code
        self.asked = 0
        self.down = False

    def render(self, request: Any) -> Any:
        self.asked += 1
        if self.down:
            request.transport.abortConnection()
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"{}"


class ProbeTests(TestCase):
    def probe(self, code: int) -> bool:
        probe = BackendProbe(StubTreq(Answer(code)), "http://backend/api/version", Clock())
        return self.successResultOf(Deferred.fromCoroutine(probe.reachable()))

    def test_2xx_is_reachable(self) -> None:
        self.assertTrue(self.probe(200))

    def test_a_404_is_not(self) -> None:
        """A wrong base URL (``/v1/v1/models``) answers 404: the backend is not usable."""
        self.assertFalse(self.probe(404))

    def test_an_answer_is_kept_for_cache_s_then_asked_again(self) -> None:
        backend, clock = Answer(200), Clock()
        probe = BackendProbe(StubTreq(backend), "http://backend/api/version", clock, cache_s=2.0)

        def ask() -> bool:
            return self.successResultOf(Deferred.fromCoroutine(probe.reachable()))
        self.assertTrue(ask())
        backend.down = True
        clock.advance(1.9)
        self.assertTrue(ask())  # cached: the backend was not asked
        self.assertEqual(backend.asked, 1)
        clock.advance(0.2)
        self.assertFalse(ask())  # a connection cut short is "not reachable", no error
        self.assertEqual(backend.asked, 2)


class DatabaseCheckTests(OnSQLite, TestCase):
    """On a real store (adbapi thread), as /health uses it."""

    def setUp(self) -> None:
        from twisted.internet import reactor
        self.store = Store(self.database(), reactor=reactor)
        self.store.startService()
        self.addCleanup(self.store.stopService)
        self.clock = Clock()

    async def test_writes_and_caches(self) -> None:
        check = DatabaseCheck(self.store, self.clock, cache_s=2.0)
        self.assertTrue(await check.writable())
        await self.store.stopService()  # now nothing can be written...
        self.assertTrue(await check.writable())  # ...but the answer is cached for 2 s
        self.clock.advance(2.0)
        self.assertFalse(await check.writable())
        self.clock.advance(2.0)
        self.assertFalse(await check.writable())
        self.store.startService()
        self.clock.advance(2.0)
        self.assertTrue(await check.writable())

    def test_one_check_at_a_time(self) -> None:
        writes: list[str] = []
        run_write = self.store.run_write
        self.store.run_write = lambda name, fn: (writes.append(name), run_write(name, fn))[1]
        check = DatabaseCheck(self.store, self.clock)
        first, second = check.writable(), check.writable()
        self.assertEqual(writes, ["health_write_check"])
        return ensureDeferred(self._both(first, second))

    async def _both(self, first: Deferred[bool], second: Deferred[bool]) -> None:
        self.assertEqual([await first, await second], [True, True])


class DatabaseCheckPostgresTests(OnPostgres, DatabaseCheckTests):
    """/health's write check on PostgreSQL."""
