"""The backend's model list: cached, fetched once for many callers, stale when it must."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from flm.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    model_key,
    same_model,
)
from flm.records import utc_iso

__all__ = ["ModelCache", "ModelList", "iso", "same_model"]
log = Logger()


@attrs.frozen
class ModelList:
    models: list[dict[str, Any]]
    fetched_at: float  # epoch seconds (the clock's)
    stale: bool = False


class ModelCache:
    """The backend's model list, fetched at most once per ``ttl_s``.

    One fetch at a time however many callers wait; a caller that gives up does not
    cancel the fetch for the others. When the backend fails, the last list is served
    with ``stale=True`` (and retried after ``retry_s``); with no list ever fetched the
    error is raised.
    """

    def __init__(self, backend: Backend, clock: IReactorTime, ttl_s: float = 60.0,
                 retry_s: float = 2.0) -> None:
        self._backend = backend
        self._clock = clock
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self._last: ModelList | None = None  # the last list fetched
        self._keys_of: ModelList | None = None  # the list ``_keys`` was made of
        self._keys: frozenset[str] = frozenset()
        self._serving: ModelList | None = None  # what get() answers until _fresh_until
        self._fresh_until = float("-inf")
        self._generation = 0
        self._waiters: list[Deferred[ModelList]] = []
        self.fetches = 0

    def expire(self) -> None:
        """The next :meth:`get` fetches again; the last list stays as the fallback."""
        self._generation += 1
        self._fresh_until = float("-inf")

    async def get(self) -> ModelList:
        if self._serving is not None and self._clock.seconds() < self._fresh_until:
            return self._serving
        waiter: Deferred[ModelList] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._fetch()).addErrback(lambda f: f.trap(CancelledError))
        return await waiter

    def lists_now(self, name: str) -> bool | None:
        """Without waiting: whether the last list fetched has ``name`` (None: no list yet).
        The request path asks this to route a model to the backends that have it."""
        last = self._last
        if last is None:
            return None
        if self._keys_of is not last:  # once per list fetched, not once per request
            self._keys_of = last
            self._keys = frozenset(model_key(str(m.get("name", ""))) for m in last.models)
        return name in self._keys or model_key(name) in self._keys

    async def known(self, name: str) -> bool | None:
        """True if the backend lists ``name``, False if not, None when it cannot tell."""
        try:
            listing = await self.get()
            if (not _lists(listing, name) and not listing.stale
                    and self._clock.seconds() - listing.fetched_at >= 1.0):
                self.expire()  # an older list: the model may have been pulled since
                listing = await self.get()
        except (BackendUnavailable, BackendError):
            return None
        if _lists(listing, name):
            return True
        return None if listing.stale else False

    async def _fetch(self) -> None:
        generation = self._generation
        self.fetches += 1
        try:
            models = await self._backend.list_models()
        except CancelledError:
            self._settle(BackendUnavailable("fetching the model list was cancelled"))
            raise
        except Exception as e:
            if not isinstance(e, (BackendUnavailable, BackendError)):
                log.failure("listing the backend's models failed")
                e = BackendError("listing the backend's models failed")
            if self._last is None:
                return self._settle(e)
            self._serving = attrs.evolve(self._last, stale=True)
            if generation == self._generation:
                self._fresh_until = self._clock.seconds() + self.retry_s
            return self._settle(self._serving)
        self._last = self._serving = ModelList(models, self._clock.seconds())
        if generation == self._generation:  # not expired while we were fetching
            self._fresh_until = self._clock.seconds() + self.ttl_s
        self._settle(self._last)

    def _settle(self, result: ModelList | Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.called:  # else that caller gave up
                w.errback(result) if isinstance(result, Exception) else w.callback(result)


def _lists(listing: ModelList, name: str) -> bool:
    return any(same_model(m["name"], name) for m in listing.models)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2025-01-31T12:00:00Z``)."""
    return None if ts is None else utc_iso(ts)
