"""flm.gateway.fleet and admission over several backends, on a ``task.Clock``: which backend,
affinity, the retry budget, and in-flight counts that stay exact whatever happens."""

from __future__ import annotations

import random
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flm.backends.health import BackendHealth
from flm.gateway.admission import ApiGate, BackendGate, QueueTimeout, acquire_any, admit, readmit
from flm.gateway.fleet import Fleet, Member, RetryBudget

PROPERTY = settings(derandomize=True, deadline=None, max_examples=200)
PATHS = frozenset({b"/v1/chat/completions"})


@attrs.frozen
class Config:
    model: str = "m"
    backends: tuple[str, ...] | None = None
    affinity: str | None = None


class Models:
    def __init__(self, names: list[str] | None) -> None:
        self.names = names

    def lists_now(self, name: str) -> bool | None:
        return None if self.names is None else name in self.names


def fleet_of(clock: Clock, *specs: tuple[str, int], models: dict[str, list[str]] | None = None
             ) -> Fleet:
    fleet = Fleet(clock, random=random.Random(1))
    for name, limit in specs:
        fleet.add(Member(name, "openai", b"http://" + name.encode(), PATHS,
                         BackendGate(limit, clock), BackendHealth(clock),
                         models=Models((models or {}).get(name)), max_concurrent=limit))
    return fleet


class ChoiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_least_loaded_first(self) -> None:
        fleet = fleet_of(self.clock, ("a", 4), ("b", 4))
        fleet.members["a"].gate.acquire()
        self.assertEqual(fleet.order(list(fleet.members.values()))[0].name, "b")

    def test_load_is_relative_to_max_concurrent(self) -> None:
        fleet = fleet_of(self.clock, ("small", 1), ("big", 8))
        fleet.members["big"].gate.acquire()  # 1/8 beats 0/1? no: 0 < 1/8
        self.assertEqual(fleet.order(list(fleet.members.values()))[0].name, "small")
        fleet.members["small"].gate.acquire()  # 1/1 vs 1/8
        self.assertEqual(fleet.order(list(fleet.members.values()))[0].name, "big")

    def test_weight_breaks_ties(self) -> None:
        fleet = fleet_of(self.clock, ("a", 2), ("b", 2))
        fleet.members["b"].weight = 3
        for _ in range(20):
            self.assertEqual(fleet.order(list(fleet.members.values()))[0].name, "b")

    def test_random_among_equals(self) -> None:
        fleet = fleet_of(self.clock, ("a", 2), ("b", 2), ("c", 2))
        firsts = {fleet.order(list(fleet.members.values()))[0].name for _ in range(60)}
        self.assertEqual(firsts, {"a", "b", "c"})

    def test_models_route_to_the_backends_that_list_them(self) -> None:
        fleet = fleet_of(self.clock, ("a", 1), ("b", 1), ("c", 1),
                         models={"a": ["m"], "b": ["other"]})  # c: no list yet
        self.assertEqual([m.name for m in fleet.eligible(Config())], ["a", "c"])
        self.assertEqual([m.name for m in fleet.eligible(Config(model="nobody"))],
                         ["c"])

    def test_named_backends_and_disabled(self) -> None:
        fleet = fleet_of(self.clock, ("a", 1), ("b", 1), ("c", 1))
        fleet.members["b"].enabled = False
        self.assertEqual([m.name for m in fleet.eligible(Config(backends=("b", "c")))], ["c"])
        self.assertEqual([m.name for m in fleet.eligible(Config())], ["a", "c"])

    def test_down_ones_only_when_all_are_down(self) -> None:
        fleet = fleet_of(self.clock, ("a", 4), ("b", 4))
        members = list(fleet.members.values())
        for _ in range(5):
            fleet.members["a"].health.request_failed("refused")
        self.assertEqual([m.name for m in fleet.candidates(members)], ["b"])
        for _ in range(5):
            fleet.members["b"].health.request_failed("refused")
        self.assertEqual([m.name for m in fleet.candidates(members)], ["a", "b"])
        # while down: one trial request at a time
        self.assertEqual(fleet.members["a"].gate.limit, 1)
        fleet.members["a"].health.request_ok()
        self.assertEqual(fleet.members["a"].gate.limit, 4)

    def test_state_changes_are_published(self) -> None:
        seen: list[tuple[str, str]] = []
        fleet = fleet_of(self.clock, ("a", 4))
        fleet.on_change = lambda m: seen.append((m.name, m.state))
        fleet.members["a"].health.request_ok()
        self.assertEqual(seen, [("a", "up")])


class AffinityTests(SynchronousTestCase):
    def test_kept_then_given_up_under_load(self) -> None:
        clock = Clock()
        fleet = fleet_of(clock, ("a", 4), ("b", 4), ("c", 4))
        members = list(fleet.members.values())
        fleet.pin("u:alice", fleet.members["b"])
        for _ in range(10):
            self.assertEqual([m.name for m in fleet.order(members, "u:alice")], ["b"])
        fleet.members["b"].gate.acquire()  # 1/4: not far busier
        self.assertEqual(fleet.order(members, "u:alice")[0].name, "b")
        for _ in range(3):
            fleet.members["b"].gate.acquire()  # full while the others are idle
        self.assertNotEqual(fleet.order(members, "u:alice")[0].name, "b")

    def test_not_while_down(self) -> None:
        clock = Clock()
        fleet = fleet_of(clock, ("a", 4), ("b", 4))
        fleet.pin("u:bob", fleet.members["a"])
        for _ in range(5):
            fleet.members["a"].health.request_failed("x")
        candidates = fleet.candidates(list(fleet.members.values()))
        self.assertEqual(fleet.order(candidates, "u:bob")[0].name, "b")


class RetryBudgetTests(SynchronousTestCase):
    def test_about_a_fifth_of_the_requests(self) -> None:
        clock = Clock()
        budget = RetryBudget(clock, ratio=0.2, per_s=0.0, cap=10.0)
        budget.balance = 0.0
        for _ in range(100):
            budget.deposit()
        allowed = sum(budget.withdraw() for _ in range(100))
        self.assertEqual(allowed, 10)  # capped
        budget.balance = 0.0
        for _ in range(25):
            budget.deposit()
        self.assertEqual(sum(budget.withdraw() for _ in range(25)), 5)


class AcquireAnyTests(SynchronousTestCase):
    def test_first_free_in_order_then_first_to_free_one(self) -> None:
        clock = Clock()
        a, b = BackendGate(1, clock), BackendGate(1, clock)
        self.assertIs(self.successResultOf(acquire_any([b, a])), b)
        self.assertIs(self.successResultOf(acquire_any([b, a])), a)
        d = acquire_any([a, b])
        self.assertNoResult(d)
        self.assertEqual((a.waiting, b.waiting), (1, 1))
        b.release()
        self.assertIs(self.successResultOf(d), b)
        self.assertEqual((a.waiting, b.waiting, a.in_use, b.in_use), (0, 0, 1, 1))

    def test_cancel_leaves_every_queue(self) -> None:
        clock = Clock()
        a, b = BackendGate(1, clock), BackendGate(1, clock)
        a.acquire(), b.acquire()
        d = acquire_any([a, b])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((a.waiting, b.waiting), (0, 0))

    def test_priority_across_gates(self) -> None:
        clock = Clock()
        a, b = BackendGate(1, clock), BackendGate(1, clock)
        a.acquire(), b.acquire()
        low = acquire_any([a, b], priority=0)
        high = b.acquire(priority=5)
        b.release()
        self.assertTrue(high.called)
        self.assertNoResult(low)
        a.release()
        self.assertIs(self.successResultOf(low), a)


OPS = st.lists(st.tuples(st.sampled_from(["arrive", "succeed", "fail", "cancel", "tick",
                                          "down"]),
                         st.integers(0, 50)), max_size=80)


class ExactInFlightTests(SynchronousTestCase):
    """Whatever happens -- dispatch, success, failure and failover, a client that hangs up
    while waiting or while served, a queue timeout -- each backend's in-flight count is the
    number of requests really at it, and the API's the number admitted."""

    @PROPERTY
    @given(OPS)
    def test_in_flight_is_exact(self, ops: list[tuple[str, int]]) -> None:
        clock = Clock()
        fleet = fleet_of(clock, ("a", 2), ("b", 1), ("c", 3))
        api = ApiGate(4, 20)
        open_: list[dict[str, Any]] = []  # requests admitted: their ticket
        waiting: list[Deferred[Any]] = []

        def arrive() -> None:
            order = fleet.order(fleet.candidates(list(fleet.members.values())))
            try:
                d = Deferred.fromCoroutine(admit(api, [m.gate for m in order], clock,
                                                 priority=0, deadline=clock.seconds() + 5))
            except Exception:
                return
            entry: dict[str, Any] = {}
            d.addCallback(lambda t: (entry.update(ticket=t, tried=[t.backend]),
                                     open_.append(entry)))
            d.addErrback(lambda f: f.trap(QueueTimeout, CancelledError,
                                          *_refused()))
            waiting.append(d)

        for op, n in ops:
            if op == "arrive":
                arrive()
            elif op == "succeed" and open_:
                open_.pop(n % len(open_))["ticket"].release()
            elif op == "fail" and open_:
                entry = open_.pop(n % len(open_))
                ticket = entry["ticket"]
                others = [m.gate for m in fleet.members.values()
                          if m.gate not in entry["tried"]]
                if not others:
                    ticket.release()
                    continue
                d = Deferred.fromCoroutine(readmit(ticket, others, clock, priority=0,
                                                   deadline=clock.seconds() + 5))
                d.addCallback(lambda t, e=entry: (e["tried"].append(t.backend),
                                                  open_.append(e)))
                d.addErrback(lambda f: f.trap(QueueTimeout, CancelledError))
                waiting.append(d)
            elif op == "cancel" and waiting:
                waiting.pop(n % len(waiting)).cancel()
            elif op == "tick":
                clock.advance(n / 10)
            elif op == "down":
                m = list(fleet.members.values())[n % 3]
                for _ in range(5):
                    m.health.request_failed("x")
            for m in fleet.members.values():
                at = sum(1 for e in open_ if e["ticket"].backend is m.gate)
                self.assertEqual(m.gate.in_use, at, m.name)
            # Past the API's gate, a request is either open or waiting for a backend.
            backend_waiters = {id(e[3]) for m in fleet.members.values()
                               for e in m.gate._waiting}
            self.assertEqual(api.in_use, len(open_) + len(backend_waiters))
        for d in waiting:
            d.cancel()
        for e in list(open_):
            e["ticket"].release()
        for m in fleet.members.values():
            m.health.request_ok()
            self.assertEqual(m.gate.in_use, 0)
        self.assertEqual(api.in_use, 0)


def _refused() -> tuple[type[BaseException], ...]:
    from flm.gateway.admission import Refused
    return (Refused,)

