"""flm.gateway.admission on a ``task.Clock``: the per-API gate, the shared backend gate, rate limits.

The property tests drive random sequences of arrivals, finishes, cancellations, limit changes
and time over several APIs sharing one backend gate, through ``admit`` -- the function the
proxy calls (API slot, then backend slot, ``queue_timeout_s`` over both).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flm.gateway.admission import (
    ApiGate,
    BackendGate,
    QueueTimeout,
    Refused,
    TokenBucket,
    admit,
)


PROPERTY = settings(derandomize=True, deadline=None, max_examples=300)


def fired(ds: list[Deferred[Any]]) -> list[bool]:
    return [d.called for d in ds]


class ApiGateTests(SynchronousTestCase):
    def test_limit_then_queue_then_refused(self) -> None:
        gate = ApiGate(2, 2)
        ds = [gate.acquire() for _ in range(4)]
        self.assertEqual(fired(ds), [True, True, False, False])
        self.assertEqual((gate.in_use, gate.waiting), (2, 2))
        with self.assertRaises(Refused) as e:
            gate.acquire()
        self.assertEqual((e.exception.code, e.exception.retry_after), ("queue_full", 1))
        self.assertTrue(e.exception.message)
        self.assertEqual((gate.in_use, gate.waiting), (2, 2))

    def test_no_queue(self) -> None:
        gate = ApiGate(1, 0)
        self.assertTrue(gate.acquire().called)
        self.assertRaises(Refused, gate.acquire)
        gate.release()
        self.assertTrue(gate.acquire().called)

    def test_fifo(self) -> None:
        gate = ApiGate(1, 10)
        first = gate.acquire()
        order: list[int] = []
        for i in range(5):
            gate.acquire().addCallback(lambda _, i=i: order.append(i))
        self.assertTrue(first.called)
        for _ in range(5):
            gate.release()
        self.assertEqual(order, [0, 1, 2, 3, 4])

    def test_cancel_leaves_the_queue(self) -> None:
        gate = ApiGate(1, 2)
        gate.acquire()
        a, b = gate.acquire(), gate.acquire()
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.assertEqual(gate.waiting, 1)
        gate.acquire()  # there is room again
        gate.release()
        self.assertTrue(b.called)
        self.assertEqual(gate.in_use, 1)

    def test_cancel_after_admission_changes_nothing(self) -> None:
        gate = ApiGate(1, 1)
        d = gate.acquire()
        d.cancel()
        self.successResultOf(d)
        self.assertEqual(gate.in_use, 1)

    def test_raising_the_limit_admits_waiters_in_order(self) -> None:
        gate = ApiGate(1, 5)
        ds = [gate.acquire() for _ in range(4)]
        gate.set_limits(3, 5)
        self.assertEqual(fired(ds), [True, True, True, False])
        self.assertEqual((gate.in_use, gate.waiting), (3, 1))

    def test_lowering_the_limit_admits_nobody_until_enough_leave(self) -> None:
        gate = ApiGate(3, 5)
        for _ in range(3):
            gate.acquire()
        gate.set_limits(1, 5)
        waiters = [gate.acquire(), gate.acquire()]
        self.assertEqual(fired(waiters), [False, False])
        gate.release()
        self.assertEqual(fired(waiters), [False, False])
        gate.release()
        self.assertEqual(fired(waiters), [False, False])
        gate.release()
        self.assertEqual(fired(waiters), [True, False])
        self.assertEqual((gate.in_use, gate.waiting), (1, 1))

    def test_arrival_while_over_a_lowered_limit_waits(self) -> None:
        gate = ApiGate(2, 1)
        gate.acquire(), gate.acquire()
        gate.set_limits(1, 1)
        d = gate.acquire()
        self.assertFalse(d.called)
        self.assertRaises(Refused, gate.acquire)

    def test_lowering_max_queue_keeps_waiters_refuses_newcomers(self) -> None:
        gate = ApiGate(1, 3)
        gate.acquire()
        ds = [gate.acquire() for _ in range(3)]
        gate.set_limits(1, 1)
        self.assertEqual(gate.waiting, 3)
        self.assertRaises(Refused, gate.acquire)
        gate.release()
        self.assertEqual(fired(ds), [True, False, False])


class BackendGateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gate = BackendGate(1, self.clock, aging_s=10.0)
        self.holder = self.gate.acquire()

    def admitted_in_order(self, named: dict[str, Deferred[Any]]) -> list[str]:
        order: list[str] = []
        for name, d in named.items():
            d.addCallback(lambda _, name=name: order.append(name))
        for _ in named:
            self.gate.release()
        return order

    def test_free_slot_at_once(self) -> None:
        self.assertTrue(self.holder.called)
        self.assertEqual((self.gate.in_use, self.gate.waiting), (1, 0))

    def test_priority_then_fifo(self) -> None:
        named = {"a0": self.gate.acquire(0), "b5": self.gate.acquire(5),
                 "c0": self.gate.acquire(0), "d5": self.gate.acquire(5),
                 "e-1": self.gate.acquire(-1), "f9": self.gate.acquire(9)}
        self.assertEqual(self.admitted_in_order(named), ["f9", "b5", "d5", "a0", "c0", "e-1"])

    def test_aging_lets_a_low_priority_through(self) -> None:
        low = self.gate.acquire(0)
        self.clock.advance(40)
        high = self.gate.acquire(5)  # 5 beats 0 + 40/10
        self.gate.release()
        self.assertEqual(fired([low, high]), [False, True])
        self.clock.advance(20)
        high2 = self.gate.acquire(5)  # 0 + 60/10 = 6 beats 5
        self.gate.release()
        self.assertEqual(fired([low, high2]), [True, False])

    def test_a_stream_of_high_priority_cannot_starve_a_low_one(self) -> None:
        low = self.gate.acquire(-100)
        for _ in range(3000):
            if low.called:
                break
            self.gate.acquire(100)
            self.clock.advance(1)
            self.gate.release()
        self.assertTrue(low.called)
        # 200 priority points (and the newcomer's 1 s of waiting) at 10 s each:
        # admitted after about 2000 s, not never.
        self.assertEqual(self.clock.seconds(), 2001)  # a tie goes to the older

    def test_cancel(self) -> None:
        a, b = self.gate.acquire(1), self.gate.acquire(0)
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.assertEqual(self.gate.waiting, 1)
        self.gate.release()
        self.assertTrue(b.called)
        self.assertEqual(self.gate.in_use, 1)

    def test_set_limit(self) -> None:
        ds = [self.gate.acquire() for _ in range(3)]
        self.gate.set_limit(3)
        self.assertEqual(fired(ds), [True, True, False])
        self.gate.set_limit(1)
        self.gate.release()
        self.gate.release()
        self.assertFalse(ds[2].called)
        self.assertEqual(self.gate.in_use, 1)
        self.gate.release()
        self.assertTrue(ds[2].called)


class TokenBucketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def refused(self, bucket: TokenBucket) -> int:
        with self.assertRaises(Refused) as e:
            bucket.take()
        self.assertEqual(e.exception.code, "rate_limited")
        return e.exception.retry_after

    def test_burst_then_refill(self) -> None:
        bucket = TokenBucket(60, self.clock)
        for _ in range(60):
            bucket.take()
        self.assertEqual(self.refused(bucket), 1)
        self.clock.advance(1)
        bucket.take()
        self.assertEqual(self.refused(bucket), 1)

    def test_retry_after_for_a_slow_rate(self) -> None:
        bucket = TokenBucket(1, self.clock)
        bucket.take()
        self.assertEqual(self.refused(bucket), 60)
        self.clock.advance(45)
        self.assertEqual(self.refused(bucket), 15)
        self.clock.advance(15)
        bucket.take()

    def test_fast_rate_retry_after_is_at_least_one(self) -> None:
        bucket = TokenBucket(600, self.clock)
        for _ in range(600):
            bucket.take()
        self.assertEqual(self.refused(bucket), 1)
        self.clock.advance(0.1)
        bucket.take()

    def test_idle_bucket_holds_at_most_rpm(self) -> None:
        bucket = TokenBucket(5, self.clock)
        self.clock.advance(3600)
        for _ in range(5):
            bucket.take()
        self.refused(bucket)

    def test_refusals_take_nothing(self) -> None:
        bucket = TokenBucket(60, self.clock)
        for _ in range(60):
            bucket.take()
        for _ in range(100):
            self.refused(bucket)
        self.clock.advance(1)
        bucket.take()


@PROPERTY
@given(rpm=st.one_of(st.integers(1, 130), st.sampled_from([599, 601, 1000, 7919, 100_000])),
       steps=st.lists(st.tuples(st.floats(0, 120, allow_nan=False), st.integers(0, 200)),
                      max_size=20))
def test_retry_after_is_honest(rpm: int, steps: list[tuple[float, int]]) -> None:
    """Waiting exactly Retry-After seconds is always enough, and a second less is not."""
    clock = Clock()
    bucket = TokenBucket(rpm, clock)
    for gap, takes in steps:
        clock.advance(gap)
        for _ in range(takes):
            try:
                bucket.take()
            except Refused as r:
                assert r.code == "rate_limited"
                assert 1 <= r.retry_after <= math.ceil(60 / rpm)
                if r.retry_after > 1:
                    clock.advance(r.retry_after - 1)
                    try:
                        bucket.take()
                    except Refused:
                        pass
                    else:
                        raise AssertionError("Retry-After was more than needed")
                    clock.advance(1)
                else:
                    clock.advance(r.retry_after)
                bucket.take()  # must not raise


# The property test: several APIs sharing a backend, the proxy's two-stage admission.

@attrs.define(eq=False)
class Req:
    n: int
    api: int
    arrived: float
    deadline: float
    outcome: str | None = None
    admitted: bool = False  # holds a ticket (both slots)
    done: Deferred[None] = attrs.field(factory=Deferred)
    flow: Deferred[None] | None = None
    ended_at: float | None = None


class World:
    def __init__(self, apis: list[tuple[int, int, int, float]], backend_limit: int,
                 aging_s: float) -> None:
        self.clock = Clock()
        self.config = [list(a) for a in apis]  # limit, max_queue, priority, timeout
        self.gates = [ApiGate(limit, queue) for limit, queue, _, _ in apis]
        self.backend = BackendGate(backend_limit, self.clock, aging_s)
        self.reqs: list[Req] = []
        self.admissions: list[list[int]] = [[] for _ in apis]
        self.errors: list[Any] = []

    def holders(self, api: int) -> int:
        return sum(1 for r in self.reqs if r.api == api and r.admitted)

    def at_backend(self) -> int:
        return sum(1 for r in self.reqs if r.admitted)

    def end(self, req: Req, outcome: str) -> None:
        assert req.outcome is None, f"request {req.n} ended twice: {req.outcome}, {outcome}"
        req.outcome = outcome
        req.ended_at = self.clock.seconds()

    async def _flow(self, req: Req) -> None:
        """What the proxy does around ``admit``: wait, hold the ticket, release it."""
        gate = self.gates[req.api]
        try:
            ticket = await admit(gate, self.backend, self.clock,
                                 priority=self.config[req.api][2], deadline=req.deadline)
        except Refused as r:
            assert r.code == "queue_full"
            assert gate.waiting >= gate.max_queue
            self.end(req, "queue_full")
            return
        except QueueTimeout:
            self.end(req, "queue_timeout")
            return
        except CancelledError:
            self.end(req, "cancelled")
            return
        req.admitted = True
        self.admissions[req.api].append(req.n)
        # Its API slot is counted, and the backend's limit holds.
        assert self.holders(req.api) <= gate.in_use
        assert self.at_backend() <= self.backend.limit, "backend limit passed"
        assert self.clock.seconds() <= req.deadline
        try:
            await req.done
        except CancelledError:
            pass
        finally:
            req.admitted = False
            ticket.release()
            ticket.release()  # a second release gives nothing back twice
            self.end(req, "released")

    def arrive(self, api: int) -> None:
        now = self.clock.seconds()
        req = Req(len(self.reqs), api, now, now + self.config[api][3])
        self.reqs.append(req)
        req.flow = Deferred.fromCoroutine(self._flow(req))
        req.flow.addErrback(self.errors.append)

    def finish(self, k: int) -> None:
        admitted = [r for r in self.reqs if r.admitted and not r.done.called]
        if admitted:
            admitted[k % len(admitted)].done.callback(None)

    def cancel(self, k: int) -> None:
        """A client goes away: whether it waits or is at the backend."""
        live = [r for r in self.reqs if r.outcome is None]
        if live:
            live[k % len(live)].flow.cancel()

    def set_limits(self, api: int, limit: int, queue: int) -> None:
        self.config[api][0], self.config[api][1] = limit, queue
        self.gates[api].set_limits(limit, queue)

    def drain(self) -> None:
        for _ in range(10_000):
            admitted = [r for r in self.reqs if r.admitted and not r.done.called]
            if admitted:
                admitted[0].done.callback(None)
            elif any(r.outcome is None for r in self.reqs):
                self.clock.advance(1)
            else:
                return
        raise AssertionError("requests left that never end")


api_config = st.tuples(st.integers(1, 3), st.integers(0, 3), st.integers(0, 2),
                       st.sampled_from([1.0, 5.0, 30.0]))
op = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 2)),
    st.tuples(st.just("arrive"), st.integers(0, 2)),
    st.tuples(st.just("finish"), st.integers(0, 10)),
    st.tuples(st.just("cancel"), st.integers(0, 10)),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0])),
    st.tuples(st.just("limits"), st.integers(0, 2), st.integers(1, 3), st.integers(0, 3)),
)


@PROPERTY
@given(apis=st.lists(api_config, min_size=3, max_size=3), backend_limit=st.integers(1, 3),
       aging_s=st.sampled_from([1.0, 10.0]), ops=st.lists(op, min_size=20, max_size=100))
def test_admission_accounting(apis: list[tuple[int, int, int, float]], backend_limit: int,
                              aging_s: float, ops: list[tuple[Any, ...]]) -> None:
    world = World(apis, backend_limit, aging_s)
    in_use = [0, 0, 0]
    for name, *args in ops:
        if name == "arrive":
            world.arrive(*args)
        elif name == "finish":
            world.finish(*args)
        elif name == "cancel":
            world.cancel(*args)
        elif name == "advance":
            world.clock.advance(*args)
        else:
            world.set_limits(*args)
        # Slots held = tickets held, plus (API gate) those waiting for the backend.
        assert world.backend.in_use == world.at_backend()
        for i, gate in enumerate(world.gates):
            assert world.holders(i) <= gate.in_use <= world.holders(i) + world.backend.waiting
            # Never over the limit, except above a lowered one, and then only going down.
            assert gate.in_use <= max(world.config[i][0], in_use[i]), "API limit passed"
            in_use[i] = gate.in_use
    world.drain()

    assert not world.errors, world.errors
    outcomes = {r.outcome for r in world.reqs}
    assert outcomes <= {"released", "queue_full", "queue_timeout", "cancelled"}
    for outcome in sorted(outcomes):
        event(outcome)
    for i in range(3):
        # FIFO within a priority (one priority per API): admitted in arrival order.
        admitted = world.admissions[i]
        assert admitted == sorted(admitted)
        # every admitted request was released exactly once; nobody admitted twice
        assert len(admitted) == len(set(admitted))
        assert {r.n for r in world.reqs if r.api == i and r.outcome == "released"} \
            == set(admitted)
    for r in world.reqs:
        if r.outcome == "queue_timeout":
            assert r.ended_at >= r.deadline
    # nothing left behind in any gate
    assert world.backend.in_use == 0 and world.backend.waiting == 0
    for gate in world.gates:
        assert gate.in_use == 0 and gate.waiting == 0


@PROPERTY
@given(priorities=st.lists(st.integers(-2, 2), min_size=1, max_size=30),
       gaps=st.lists(st.sampled_from([0.0, 0.0, 1.0, 5.0]), min_size=30, max_size=30))
def test_backend_gate_fifo_within_a_priority(priorities: list[int], gaps: list[float]) -> None:
    clock = Clock()
    gate = BackendGate(1, clock, aging_s=3.0)
    gate.acquire()
    order: list[int] = []
    for i, (p, gap) in enumerate(zip(priorities, gaps)):
        clock.advance(gap)
        gate.acquire(p).addCallback(lambda _, i=i: order.append(i))
    for _ in priorities:
        clock.advance(1)
        gate.release()
    assert sorted(order) == list(range(len(priorities)))
    for p in set(priorities):
        same = [i for i in order if priorities[i] == p]
        assert same == sorted(same)


class ManyWaitersTests(SynchronousTestCase):
    """Twisted #9304: a DeferredSemaphore wedges with RecursionError when queued waiters
    that finish at once release from inside their callbacks. The gates must not."""

    N = 5000

    def test_api_gate_releases_5000_waiters_at_once(self) -> None:
        gate = ApiGate(1, self.N)
        first = gate.acquire()
        order: list[int] = []
        for i in range(self.N):
            gate.acquire().addCallback(lambda _, i=i: (order.append(i), gate.release()))
        self.assertTrue(first.called)
        gate.release()
        self.assertEqual(order, list(range(self.N)))
        self.assertEqual((gate.in_use, gate.waiting), (0, 0))

    def test_backend_gate_releases_5000_waiters_at_once(self) -> None:
        clock = Clock()
        gate = BackendGate(1, clock)
        gate.acquire()
        order: list[int] = []
        for i in range(self.N):
            gate.acquire(i % 3).addCallback(lambda _, i=i: (order.append(i), gate.release()))
        gate.release()
        self.assertEqual(sorted(order), list(range(self.N)))
        self.assertEqual((gate.in_use, gate.waiting), (0, 0))

    def test_admit_5000_waiters_released_at_once(self) -> None:
        clock = Clock()
        api, backend = ApiGate(1, self.N), BackendGate(1, clock)
        holder = self.successResultOf(Deferred.fromCoroutine(
            admit(api, backend, clock, priority=0, deadline=60.0)))
        order: list[int] = []
        for i in range(self.N):
            d = Deferred.fromCoroutine(admit(api, backend, clock, priority=0, deadline=60.0))
            d.addCallback(lambda ticket, i=i: (order.append(i), ticket.release()))
        holder.release()
        self.assertEqual(order, list(range(self.N)))
        self.assertEqual((api.in_use, api.waiting, backend.in_use, backend.waiting), (0, 0, 0, 0))


class ClosingTests(SynchronousTestCase):
    """At stop, what has not reached the backend never will: waiters and newcomers are
    refused with ``shutting_down``, and nothing stays held."""

    def test_closing_refuses_waiters_and_newcomers_and_holds_nothing(self) -> None:
        clock = Clock()
        api, backend = ApiGate(1, 10), BackendGate(1, clock)
        first = self.successResultOf(Deferred.fromCoroutine(
            admit(api, backend, clock, priority=0, deadline=60)))
        queued = Deferred.fromCoroutine(admit(api, backend, clock, priority=0, deadline=60))
        other_api = ApiGate(1, 10)  # its API slot taken, waiting for the backend
        at_backend = Deferred.fromCoroutine(
            admit(other_api, backend, clock, priority=0, deadline=60))
        self.assertNoResult(queued)
        self.assertNoResult(at_backend)
        api.close()
        backend.close()
        for d in (queued, at_backend):
            self.assertEqual(self.failureResultOf(d, Refused).value.code, "shutting_down")
        self.assertEqual((api.waiting, backend.waiting, other_api.in_use), (0, 0, 0))
        self.assertRaises(Refused, api.acquire)
        self.assertRaises(Refused, backend.acquire)
        first.release()  # the request at the backend finishes as usual
        self.assertEqual((api.in_use, backend.in_use), (0, 0))
