"""Run-once work across nodes: two stores on one file, two holders of one lease, on the
clock. One takes it and runs, the other skips; expiry (a dead node) or a clean stop
hands it over."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from flm.observe.lease import Lease
from flm.observe.periodic import PeriodicService
from tests.test_admin_apis import InlineReactor, inline_store

T0 = 1773576000.0


class Counting(PeriodicService):
    name = "retention"

    def __init__(self, clock: InlineReactor, interval: float) -> None:
        super().__init__(clock, interval)
        self.runs = 0

    def tick(self) -> None:
        self.runs += 1


class LeaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flm-test-leases-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = InlineReactor()
        self.clock.advance(T0)
        self.stores = [inline_store(self.dir / "flm.db", self.clock) for _ in range(2)]
        for store in self.stores:
            self.addCleanup(store.stopService)

    def node(self, i: int, name: str) -> Counting:
        task = Counting(self.clock, 10.0)
        task.lease = Lease(self.stores[i], "retention", name, self.clock, 30.0)
        return task

    def test_one_holder_runs_the_other_skips_and_expiry_hands_it_over(self) -> None:
        a, b = self.node(0, "a"), self.node(1, "b")
        a.startService()
        b.startService()
        for _ in range(3):
            self.clock.advance(10)
        self.assertEqual((a.runs, b.runs), (3, 0))  # a renews it each run
        a._loop.stop()  # a dies: no renewal, no clean stop
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(b.runs, 0)  # a's lease runs until 30 s after its last run
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(b.runs, 1)
        self.assertTrue(b.lease.holding)

    def test_a_clean_stop_hands_the_lease_on_at_once(self) -> None:
        a, b = self.node(0, "a"), self.node(1, "b")
        a.startService()
        b.startService()
        self.clock.advance(10)
        self.successResultOf(a.stopService())
        self.clock.advance(10)
        self.assertEqual((a.runs, b.runs), (1, 1))

    def test_take_lease_is_one_atomic_claim(self) -> None:
        store = self.stores[0]
        self.assertTrue(self.successResultOf(store.take_lease("x", "a", T0, 30)))
        self.assertFalse(self.successResultOf(store.take_lease("x", "b", T0 + 29, 30)))
        self.assertTrue(self.successResultOf(store.take_lease("x", "a", T0 + 29, 30)))
        self.assertFalse(self.successResultOf(store.take_lease("x", "b", T0 + 58, 30)))
        self.assertTrue(self.successResultOf(store.take_lease("x", "b", T0 + 60, 30)))
