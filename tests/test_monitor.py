"""Monitor: samples on a timer, warns once over the memory limit and once back under."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Iterator

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from flm.observe import monitor as monitor_module
from flm.observe.monitor import Monitor


class FakeProcess:
    def __init__(self) -> None:
        self.rss = 100
        self.cpu = 12.5
        self.broken = False

    @contextlib.contextmanager
    def oneshot(self) -> Iterator[None]:
        yield

    def memory_info(self) -> Any:
        if self.broken:
            raise OSError("no /proc")
        return SimpleNamespace(rss=self.rss)

    def cpu_percent(self, interval: Any = None) -> float:
        return self.cpu

    def num_threads(self) -> int:
        return 3


class MonitorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.process = FakeProcess()
        self.monitor = Monitor(self.clock, interval=60, memory_limit=1000,
                               process=self.process)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def messages(self, level: LogLevel) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == monitor_module.__name__
                and e.get("log_level") == level]

    def test_samples_on_start_and_every_interval(self) -> None:
        self.monitor.startService()
        self.assertEqual((self.monitor.last.rss_bytes, self.monitor.last.cpu_percent,
                          self.monitor.last.at), (100, 12.5, 0))
        self.process.rss = 200
        self.clock.advance(59)
        self.assertEqual(self.monitor.last.rss_bytes, 100)
        self.clock.advance(1)
        self.assertEqual((self.monitor.last.rss_bytes, self.monitor.last.at), (200, 60))
        self.assertEqual(self.monitor.uptime_s, 60)
        self.monitor.stopService()
        self.assertFalse(self.monitor._loop.running)

    def test_warns_once_over_and_once_back_under(self) -> None:
        self.monitor.startService()
        self.process.rss = 2000
        for _ in range(3):
            self.clock.advance(60)
        self.assertTrue(self.monitor.over_limit)
        self.assertEqual(len(self.messages(LogLevel.warn)), 1)
        self.process.rss = 500
        for _ in range(3):
            self.clock.advance(60)
        self.assertFalse(self.monitor.over_limit)
        self.assertEqual(len(self.messages(LogLevel.info)), 1)
        self.process.rss = 5000
        self.clock.advance(60)
        self.assertEqual(len(self.messages(LogLevel.warn)), 2)

    def test_a_failing_sample_does_not_stop_the_loop(self) -> None:
        self.monitor.startService()
        self.process.broken = True
        self.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertTrue(self.monitor._loop.running)
        self.process.broken = False
        self.process.rss = 300
        self.clock.advance(60)
        self.assertEqual(self.monitor.last.rss_bytes, 300)

    def test_real_process(self) -> None:
        sample = Monitor(self.clock).sample()
        self.assertGreater(sample.rss_bytes, 1_000_000)
        self.assertGreaterEqual(sample.cpu_percent, 0.0)
