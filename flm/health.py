"""``GET /health``: is the backend reachable, is memory under the limit, can we write?"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime


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
            self._reachable = True
        except CancelledError:
            raise
        except Exception:
            self._reachable = False
        self._checked_at = self._clock.seconds()
        return self._reachable


class Health:
    """The body and status of ``/health``."""

    def __init__(self, probe: BackendProbe, memory_limit: int,
                 db_healthy: Callable[[], bool], rss: Callable[[], int]) -> None:
        self._probe = probe
        self._limit = memory_limit
        self._db_healthy = db_healthy
        self._rss = rss  # the monitor's, which reads this process as it runs (after a fork)

    async def __call__(self) -> tuple[int, dict[str, Any]]:
        reachable = await self._probe.reachable()
        rss = self._rss()
        database = self._db_healthy()
        ok = reachable and rss <= self._limit and database
        return (200 if ok else 503), {
            "status": "ok" if ok else "degraded",
            "backend": {"reachable": reachable},
            "memory": {"rss_bytes": rss, "limit_bytes": self._limit},
            "database": {"writable": database},
        }
