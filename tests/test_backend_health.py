"""flm.backends.health: the state machine of one backend, and the probe loop, on a Clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flm.backends.health import BackendHealth, Prober, ProbeResult

PROPERTY = settings(derandomize=True, deadline=None, max_examples=300)


class StateMachineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.changes: list[str] = []
        self.h = BackendHealth(self.clock, on_change=lambda h: self.changes.append(h.state))

    def test_starts_probing_then_up_after_a_good_probe(self) -> None:
        self.assertEqual(self.h.state, "probing")
        self.h.probed(ProbeResult.UP)
        self.assertEqual(self.h.state, "up")
        self.assertEqual(self.changes, ["up"])

    def test_down_then_up_after_two_good_probes(self) -> None:
        for _ in range(3):
            self.h.probed(ProbeResult.DOWN, "refused")
        self.assertEqual(self.h.state, "down")
        self.h.probed(ProbeResult.UP)
        self.assertEqual(self.h.state, "down")
        self.h.probed(ProbeResult.UP)
        self.assertEqual(self.h.state, "up")
        self.assertEqual(self.changes, ["down", "up"])

    def test_down_after_three_failed_probes(self) -> None:
        self.h.state = "up"
        for _ in range(2):
            self.h.probed(ProbeResult.DOWN, "refused")
        self.assertEqual(self.h.state, "up")
        self.h.probed(ProbeResult.DOWN, "refused")
        self.assertEqual(self.h.state, "down")
        self.assertEqual(self.h.last_error, "refused")

    def test_down_after_five_failed_requests_in_a_row(self) -> None:
        self.h.state = "up"
        for _ in range(4):
            self.h.request_failed("reset")
        self.h.request_ok()  # the run is broken
        for _ in range(4):
            self.h.request_failed("reset")
        self.assertEqual(self.h.state, "up")
        self.h.request_failed("reset")
        self.assertEqual(self.h.state, "down")

    def test_loading_model_is_probing_not_down(self) -> None:
        self.h.state = "up"
        for _ in range(5):
            self.h.probed(ProbeResult.LOADING, "loading model")
        self.assertEqual(self.h.state, "probing")

    def test_checked_at(self) -> None:
        self.clock.advance(7)
        self.h.probed(ProbeResult.UP)
        self.assertEqual(self.h.checked_at, 7)

    @PROPERTY
    @given(st.lists(st.sampled_from(["p_up", "p_down", "p_loading", "r_ok", "r_fail"]),
                    max_size=60))
    def test_state_follows_the_rules(self, events: list[str]) -> None:
        h = BackendHealth(Clock())
        fails = probes_bad = probes_good = 0
        for e in events:
            before = h.state
            {"p_up": lambda: h.probed(ProbeResult.UP),
             "p_down": lambda: h.probed(ProbeResult.DOWN, "x"),
             "p_loading": lambda: h.probed(ProbeResult.LOADING, "x"),
             "r_ok": h.request_ok, "r_fail": lambda: h.request_failed("x")}[e]()
            probes_good = probes_good + 1 if e == "p_up" else (0 if e.startswith("p_") else
                                                                probes_good)
            probes_bad = probes_bad + 1 if e == "p_down" else (0 if e in ("p_up", "p_loading")
                                                               else probes_bad)
            fails = fails + 1 if e == "r_fail" else (0 if e == "r_ok" else fails)
            if h.state == "down" and before != "down":
                self.assertTrue(probes_bad >= 3 or fails >= 5)
            if h.state == "up" and before == "down":
                self.assertTrue(probes_good >= 2 or e == "r_ok")
            self.assertIn(h.state, ("up", "down", "probing"))


class LastErrorTests(SynchronousTestCase):
    def test_the_error_stays_while_down_and_goes_when_up_again(self) -> None:
        health = BackendHealth(Clock())
        for _ in range(3):
            health.probed(ProbeResult.DOWN, "connection refused")
        self.assertEqual((health.state, health.last_error), ("down", "connection refused"))
        health.probed(ProbeResult.UP)
        self.assertEqual(health.last_error, "connection refused")  # not up yet: 1 of 2
        health.probed(ProbeResult.UP)
        self.assertEqual((health.state, health.last_error), ("up", None))


class ProberTests(SynchronousTestCase):
    def test_probes_with_jitter_and_a_timeout(self) -> None:
        clock = Clock()
        calls: list[float] = []
        pending: list[Deferred[ProbeResult]] = []

        def probe() -> Deferred[tuple[ProbeResult, str | None]]:
            calls.append(clock.seconds())
            d: Deferred = Deferred()
            pending.append(d)
            return d
        h = BackendHealth(clock)
        p = Prober(h, probe, clock, interval_s=5.0, timeout_s=2.0, random=lambda: 0.5)
        p.start()
        self.assertEqual(calls, [0])
        clock.advance(2)  # the probe timed out: a failure
        self.assertEqual(h.failed_probes, 1)
        clock.advance(5)
        self.assertEqual(len(calls), 2)
        pending[-1].callback((ProbeResult.UP, None))
        self.assertEqual(h.state, "up")
        clock.advance(5)
        pending[-1].callback((ProbeResult.UP, None))
        p.stop()
        clock.advance(100)
        self.assertEqual(len(calls), 3)

    def test_jitter_bounds(self) -> None:
        clock = Clock()
        h = BackendHealth(clock)
        for r, expected in ((0.0, 4.0), (1.0, 6.0)):
            p = Prober(h, lambda: succeed((ProbeResult.UP, None)), clock, interval_s=5.0,
                       random=lambda r=r: r)
            self.assertAlmostEqual(p.next_delay(), expected)
