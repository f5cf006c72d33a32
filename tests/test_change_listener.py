"""The PostgreSQL change listener on a real server: a committed ``config_version`` bump
(the trigger of migration 007) wakes the poll; a rolled-back one does not; a listener whose
connection is cut comes back and wakes once to catch up; a stop ends its thread."""

from __future__ import annotations

import queue
from typing import Any, Callable

import pytest

from flm.store.listen import ChangeListener
from flm.store.pg import connect, migrate
from tests import pg

WAIT = 10.0  # bound for every wait on the listener's thread


class ThreadedCalls:
    """Stands in for the reactor's ``callFromThread``: the test runs the calls."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = \
            queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        self.calls.put((f, a, kw))

    def run_next(self) -> Callable[..., Any]:
        f, a, kw = self.calls.get(timeout=WAIT)
        f(*a, **kw)
        return f


@pytest.fixture
def listening(request: pytest.FixtureRequest) -> Any:
    pg.require()
    url = pg.create_database()
    request.addfinalizer(lambda: pg.drop_database(url))
    conn = connect(url, autocommit=True)
    migrate(conn)
    conn.close()
    wakes: list[int] = []
    reactor = ThreadedCalls()
    listener = ChangeListener(url, lambda: wakes.append(1), reactor=reactor, timeout=0.1,
                              retry=0.1)
    listener.startService()
    assert reactor.run_next() is not None and wakes == [1]  # the catch-up wake on connect
    assert listener.connected.wait(WAIT)
    yield url, listener, reactor, wakes
    if listener.running:
        stopped = listener.stopService()
        while not stopped.called:
            reactor.run_next()


def bump(url: str, commit: bool = True) -> None:
    conn = connect(url)
    try:
        conn.execute("UPDATE config_version SET version = version + 1")
        conn.commit() if commit else conn.rollback()
    finally:
        conn.close()


def test_a_committed_change_wakes_the_poll(listening: Any) -> None:
    url, listener, reactor, wakes = listening
    bump(url)
    reactor.run_next()
    assert wakes == [1, 1]


def test_a_rolled_back_change_wakes_nothing(listening: Any) -> None:
    url, listener, reactor, wakes = listening
    bump(url, commit=False)
    bump(url)  # the one that counts; had the first woken anything, it came before
    reactor.run_next()
    assert wakes == [1, 1] and reactor.calls.empty()


def test_a_cut_connection_comes_back_and_catches_up(listening: Any) -> None:
    url, listener, reactor, wakes = listening
    admin = connect(url)
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                  "datname = current_database() AND pid <> pg_backend_pid()")
    admin.commit()
    admin.close()
    while len(wakes) < 2:  # a warning about the loss, then the catch-up wake
        reactor.run_next()
    bump(url)
    while len(wakes) < 3:
        reactor.run_next()


def test_a_stop_ends_the_thread(listening: Any) -> None:
    url, listener, reactor, wakes = listening
    stopped = listener.stopService()
    while not stopped.called:
        reactor.run_next()
    bump(url)
    with pytest.raises(queue.Empty):
        reactor.calls.get(timeout=0.5)  # nothing listens any more
