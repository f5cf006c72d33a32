"""``GET /health``: is the backend reachable, is memory under the limit, can we write?"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()


class BackendProbe:
    """Asks the backend whether it answers at all, at most once per ``cache_s``."""

    def __init__(self, http: Any, url: str, clock: IReactorTime, *, cache_s: float = 2.0,
                 timeout_s: float = 2.0) -> None:
        self._http = http
        self._url = url
        self._clock = clock
        self._cache_s = cache_s
        self._timeout_s = timeout_s
        self._checked_at: float | None = None
        self._reachable = False

    async def reachable(self) -> bool:
        now = self._clock.seconds()
        if self._checked_at is not None and now - self._checked_at < self._cache_s:
            return self._reachable
        try:
            response = await self._http.get(self._url, timeout=self._timeout_s)
            await response.content()
            # Any answer is not enough: a wrong base URL answers 404 to everything.
            self._reachable = 200 <= response.code < 300
        except CancelledError:
            raise
        except Exception:
            self._reachable = False
        self._checked_at = self._clock.seconds()
        return self._reachable


class DatabaseCheck:
    """Can the database be written now? A tiny write in a transaction, at most once per
    ``cache_s`` and one at a time; one that takes over ``timeout_s`` (another writer holds
    the lock) counts as no. The proxy never waits on it: it only writes to the log buffer."""

    def __init__(self, store: Any, clock: IReactorTime, *, cache_s: float = 2.0,
                 timeout_s: float = 2.0) -> None:
        self._store = store
        self._clock = clock
        self._cache_s = cache_s
        self._timeout_s = timeout_s
        self._checked_at: float | None = None
        self._writable = False
        self._running: Deferred[bool] | None = None

    def writable(self) -> Deferred[bool]:
        now = self._clock.seconds()
        if self._checked_at is not None and now - self._checked_at < self._cache_s:
            return succeed(self._writable)
        running = self._running
        if running is None:
            running = Deferred.fromCoroutine(self._check())
            if not running.called:
                self._running = running  # cleared by _check when it ends
        d: Deferred[bool] = Deferred()
        running.addCallback(lambda ok: (d.callback(ok), ok)[1])
        return d

    async def _check(self) -> bool:
        try:
            write = self._store.write_check()
            await write.addTimeout(self._timeout_s, self._clock)
            self._writable = True
        except CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - locked, read-only, disk full, not open...
            if self._writable or self._checked_at is None:
                log.warn("database: a test write failed ({e}); /health says degraded", e=e)
            self._writable = False
        finally:
            self._checked_at = self._clock.seconds()
            self._running = None
        return self._writable


class Health:
    """The body and status of ``/health``."""

    def __init__(self, probe: BackendProbe, memory_limit: int,
                 database: DatabaseCheck, rss: Callable[[], int], fleet: Any = None,
                 running_apis: Callable[[], list[Any]] = list) -> None:
        self._probe = probe
        self._fleet = fleet  # several backends: their probed states decide
        self._running_apis = running_apis
        self._limit = memory_limit
        self._database = database
        self._rss = rss  # the monitor's, which reads this process as it runs (after a fork)

    def _backends(self) -> tuple[bool, bool, dict[str, str]] | None:
        """With several backends: (all up, every running API has one not down, states)."""
        members = [m for m in getattr(self._fleet, "members", {}).values() if m.enabled]
        if len(getattr(self._fleet, "members", {})) <= 1:
            return None
        states = {m.name: m.state for m in members}
        served = all(any(m.state != "down" for m in self._fleet.eligible(config))
                     for config in self._running_apis())
        return all(s == "up" for s in states.values()), served, states

    async def __call__(self) -> tuple[int, dict[str, Any]]:
        several = self._backends()
        if several is None:
            reachable = await self._probe.reachable()
            all_up = served = reachable
        else:
            all_up, served, states = several
            reachable = any(s != "down" for s in states.values())
            served = served and reachable
        rss = self._rss()
        database = await self._database.writable()
        fine = rss <= self._limit and database
        ok = all_up and fine
        body: dict[str, Any] = {
            "status": "ok" if ok else "degraded",
            "backend": {"reachable": reachable},
            "memory": {"rss_bytes": rss, "limit_bytes": self._limit},
            "database": {"writable": database},
        }
        if several is not None:
            body["backends"] = states
        return (200 if ok or (served and fine) else 503), body
