"""PostgreSQL ``LISTEN``: wakes the change poll the moment another node commits a change.

A trigger on ``config_version`` (migration 007 on PostgreSQL) sends ``NOTIFY
flm_changes`` with every bump, delivered at commit. One dedicated connection listens in a
thread of its own (a listening connection cannot serve a pool). Notifications are wake-ups,
not a queue: whatever is missed while the connection is down the version poll finds, and
each (re)connect wakes the poll once to catch up.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from flm.store.pg import KEEPALIVES

CHANNEL = "flm_changes"

log = Logger()


class ChangeListener(Service):
    """Calls ``wake()`` on the reactor thread for every ``NOTIFY flm_changes``."""

    name = "change_listener"

    def __init__(self, url: str, wake: Callable[[], None], *, reactor: Any,
                 timeout: float = 0.5, retry: float = 1.0) -> None:
        self._url = url
        self._wake = wake
        self._reactor = reactor
        self._timeout = timeout  # how soon the thread sees a stop
        self._retry = retry
        self._stop = threading.Event()
        self._done: Deferred[None] | None = None
        self.connected = threading.Event()  # for tests: LISTEN is in place

    def startService(self) -> None:
        super().startService()
        self._stop.clear()
        done = self._done = Deferred()
        threading.Thread(target=self._run, args=(done,), name="flm-listen", daemon=True).start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stop.set()
        done, self._done = self._done, None
        return done if done is not None else succeed(None)

    def _run(self, done: Deferred[None]) -> None:
        import psycopg
        lost = False
        try:
            while not self._stop.is_set():
                try:
                    with psycopg.connect(self._url, autocommit=True, connect_timeout=5,
                                         **KEEPALIVES) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        if lost:
                            self._reactor.callFromThread(
                                log.info, "change listener: listening again")
                        lost = False
                        self.connected.set()
                        self._reactor.callFromThread(self._wake)  # what passed while away
                        while not self._stop.is_set():
                            for _ in conn.notifies(timeout=self._timeout):
                                self._reactor.callFromThread(self._wake)
                except psycopg.Error as e:
                    self.connected.clear()
                    if not lost:  # said once an outage
                        self._reactor.callFromThread(
                            log.warn, "change listener: PostgreSQL lost ({error}); the version "
                            "poll goes on, retrying", error=str(e).strip().splitlines()[0])
                    lost = True
                    self._stop.wait(self._retry)
        finally:
            self._reactor.callFromThread(done.callback, None)
