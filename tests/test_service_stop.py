"""``FLMService.stopService``: children stop one at a time, last added first, and a child
that fails to stop is logged while the others still stop (the store still closes)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flm.config import Settings
from flm.service import FLMService


class Child(Service):
    def __init__(self, name: str, stops: list[str], outcome: Any = None) -> None:
        self.name = name
        self.stops = stops
        self.outcome = outcome

    def stopService(self) -> Any:
        super().stopService()
        self.stops.append(self.name)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class StopTests(SynchronousTestCase):
    def service(self, *children: Child) -> FLMService:
        """The real FLMService, its own children swapped for recording ones."""
        service = FLMService(Settings(data_dir=self.mktemp()), Clock(), token="t")
        for child in list(service):
            child.disownServiceParent()
        for child in children:
            child.setServiceParent(service)
        service.running = 1
        for child in children:
            child.running = 1
        return service

    def test_one_at_a_time_last_added_first(self) -> None:
        stops: list[str] = []
        slow: Deferred[None] = Deferred()
        service = self.service(Child("store", stops), Child("logbuffer", stops, slow),
                               Child("admin", stops))
        done = service.stopService()
        self.assertEqual(stops, ["admin", "logbuffer"])  # the store waits for the log flush
        self.assertNoResult(done)
        slow.callback(None)
        self.assertEqual(stops, ["admin", "logbuffer", "store"])
        self.successResultOf(done)

    def test_a_failing_child_is_logged_and_the_rest_still_stop(self) -> None:
        stops: list[str] = []
        service = self.service(Child("store", stops),
                               Child("pools", stops, fail(RuntimeError("pool broke"))),
                               Child("registry", stops, RuntimeError("raised at once")),
                               Child("admin", stops))
        done = service.stopService()
        self.assertEqual(stops, ["admin", "registry", "pools", "store"])
        self.successResultOf(done)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertFalse(any(child.running for child in service))
