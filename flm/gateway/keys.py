"""An API's keys on the request path: lookup by hash, expiry, grace, per-key limits, usage.

Everything here is memory: the registry loads an API's keys when it starts it and the admin
API pushes every change (``Registry.set_keys``), so checking a key never calls the store.
Usage (requests and tokens per UTC day, tokens per UTC month) is counted here and written
in batches by :class:`flm.observe.usage.UsageFlush`; it is read back at start.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import date, timedelta
from typing import Any, Iterable, Sequence

from twisted.internet.interfaces import IReactorTime

from flm.gateway.admission import Refused
from flm.records import KeyRecord

DAY = 86400
_NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()


def month_span(day: int) -> tuple[int, int]:
    """The first day of ``day``'s UTC month and the first day of the next (epoch days)."""
    d = date(1970, 1, 1) + timedelta(days=day)
    first = d.replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    epoch = date(1970, 1, 1)
    return (first - epoch).days, (nxt - epoch).days


class KeyRing:
    """One API's keys by the hash of their secrets; a rotated key's old secret maps to it
    too, until its ``grace_until``."""

    __slots__ = ("keys", "_by_hash")

    def __init__(self, keys: Iterable[KeyRecord]) -> None:
        self.keys = [k for k in keys]
        self._by_hash: dict[str, tuple[KeyRecord, float | None]] = {}
        for k in self.keys:
            if k.revoked_at is not None:
                continue
            self._by_hash[k.key_hash] = (k, None)
            if k.old_hash is not None and k.grace_until is not None:
                self._by_hash[k.old_hash] = (k, k.grace_until)

    def find(self, key_hash: str, now: float) -> KeyRecord | None:
        """The key with this hash, if it works now (expired keys too: they get their own
        answer); None for anything else, revoked and past grace included."""
        entry = self._by_hash.get(key_hash)
        if entry is None or (entry[1] is not None and now >= entry[1]):
            return None
        return entry[0]


class _Counts:
    """One key's usage: this UTC day's requests and tokens, this UTC month's tokens."""

    __slots__ = ("day", "requests", "tokens", "month_start", "month_end", "month_tokens")

    def __init__(self, day: int) -> None:
        self.day = day
        self.requests = self.tokens = self.month_tokens = 0
        self.month_start, self.month_end = month_span(day)

    def roll(self, day: int) -> None:
        if day != self.day:
            self.day = day
            self.requests = self.tokens = 0
            if not self.month_start <= day < self.month_end:
                self.month_start, self.month_end = month_span(day)
                self.month_tokens = 0


class _Limits:
    """One key's request bucket (``rate_limit_rpm``) and token window (``tpm_limit``)."""

    __slots__ = ("rpm", "allowance", "at", "window", "window_tokens")

    def __init__(self, now: float) -> None:
        self.rpm: int | None = None
        self.allowance = 0.0
        self.at = now
        self.window: deque[tuple[float, int]] = deque()
        self.window_tokens = 0

    def refill(self, rpm: int, now: float) -> float:
        if self.rpm != rpm:  # a new limit starts full
            self.rpm, self.allowance, self.at = rpm, float(rpm), now
        self.allowance = min(float(rpm), self.allowance + (now - self.at) * rpm / 60.0)
        self.at = now
        return self.allowance

    def tokens_in_minute(self, now: float) -> int:
        window = self.window
        while window and window[0][0] <= now - 60.0:
            self.window_tokens -= window.popleft()[1]
        return self.window_tokens


class KeyStates:
    """Usage and limit state of every key, by key id; shared by all APIs' request paths."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._counts: dict[int, _Counts] = {}
        self._limits: dict[int, _Limits] = {}
        #: Not yet stored: ``{(key_id, day): [requests, tokens]}`` and last use per key.
        self.pending: dict[tuple[int, int], list[int]] = {}
        self.last_used: dict[int, float] = {}
        #: Requests of keys with a budget, each stored on its own, atomically, so budgets
        #: hold across nodes (flm.observe.budgets): ``(key_id, day, tokens, at)``.
        self.charges: deque[tuple[int, int, int, float]] = deque()
        self.on_charge: Any = None  # told when ``charges`` has a new one

    # usage

    def load(self, rows: Iterable[tuple[int, int, int, int]]) -> None:
        """Stored ``(key_id, day, requests, tokens)`` rows of this month (at start)."""
        today = int(self._clock.seconds() // DAY)
        for key_id, day, requests, tokens in rows:
            counts = self._counts_of(key_id, today)
            if day == today:
                counts.requests += requests
                counts.tokens += tokens
            if counts.month_start <= day < counts.month_end:
                counts.month_tokens += tokens

    def _counts_of(self, key_id: int, day: int) -> _Counts:
        counts = self._counts.get(key_id)
        if counts is None:
            counts = self._counts[key_id] = _Counts(day)
        else:
            counts.roll(day)
        return counts

    def usage(self, key_id: int) -> tuple[int, int, int]:
        """``(requests_today, tokens_today, tokens_month)``."""
        counts = self._counts_of(key_id, int(self._clock.seconds() // DAY))
        return counts.requests, counts.tokens, counts.month_tokens

    def charge(self, key: KeyRecord, tokens: int) -> None:
        """A request of ``key`` ended having used ``tokens``: count it."""
        now = self._clock.seconds()
        day = int(now // DAY)
        counts = self._counts_of(key.id, day)
        counts.requests += 1
        counts.tokens += tokens
        counts.month_tokens += tokens
        if key.daily_token_budget is not None or key.monthly_token_budget is not None:
            self.charges.append((key.id, day, tokens, now))
            if self.on_charge is not None:
                self.on_charge()
        else:
            self._pend(key.id, day, tokens, now)
        if key.tpm_limit is not None and tokens:
            limits = self._limits_of(key.id, now)
            limits.window.append((now, tokens))
            limits.window_tokens += tokens

    def _pend(self, key_id: int, day: int, tokens: int, now: float) -> None:
        pending = self.pending.get((key_id, day))
        if pending is None:
            self.pending[(key_id, day)] = [1, tokens]
        else:
            pending[0] += 1
            pending[1] += tokens
        self.last_used[key_id] = now

    def settle(self, key_id: int, day: int, tokens_today: int, tokens_month: int,
               requests_today: int | None = None) -> None:
        """The store's totals of a key (every node's requests): the key's counts are those
        plus this node's usage not stored yet (queued charges, pending counts)."""
        counts = self._counts_of(key_id, int(self._clock.seconds() // DAY))
        waiting = [(d, 1, t) for k, d, t, _ in self.charges if k == key_id]
        waiting += [(d, r, t) for (k, d), (r, t) in self.pending.items() if k == key_id]
        if counts.day == day:
            counts.tokens = tokens_today + sum(t for d, _, t in waiting if d == day)
            if requests_today is not None:
                counts.requests = requests_today + sum(r for d, r, _ in waiting if d == day)
        if counts.month_start <= day < counts.month_end:
            counts.month_tokens = tokens_month + sum(
                t for d, _, t in waiting if counts.month_start <= d < counts.month_end)

    def drain(self) -> tuple[dict[tuple[int, int], list[int]], dict[int, float]]:
        """What to store now; :meth:`restore` it if storing fails."""
        pending, self.pending = self.pending, {}
        last_used, self.last_used = self.last_used, {}
        return pending, last_used

    def restore(self, pending: dict[tuple[int, int], list[int]],
                last_used: dict[int, float]) -> None:
        for k, (requests, tokens) in pending.items():
            mine = self.pending.setdefault(k, [0, 0])
            mine[0] += requests
            mine[1] += tokens
        for key_id, t in last_used.items():
            self.last_used[key_id] = max(t, self.last_used.get(key_id, t))

    def forget(self, key_ids: Iterable[int]) -> None:
        for key_id in key_ids:
            self._counts.pop(key_id, None)
            self._limits.pop(key_id, None)

    # limits

    def _limits_of(self, key_id: int, now: float) -> _Limits:
        limits = self._limits.get(key_id)
        if limits is None:
            limits = self._limits[key_id] = _Limits(now)
        return limits

    def check(self, key: KeyRecord) -> None:
        """Raise ``Refused`` if ``key`` may not send a request now; consumes nothing."""
        if (key.rate_limit_rpm is None and key.tpm_limit is None
                and key.daily_token_budget is None and key.monthly_token_budget is None):
            return
        now = self._clock.seconds()
        if key.daily_token_budget is not None or key.monthly_token_budget is not None:
            day = int(now // DAY)
            counts = self._counts_of(key.id, day)
            if key.daily_token_budget is not None and counts.tokens >= key.daily_token_budget:
                wait = max(1, math.ceil((day + 1) * DAY - now))
                raise Refused("budget_exceeded", wait, "This key's daily token budget of "
                              f"{key.daily_token_budget} is spent; it renews at 00:00 UTC.")
            if (key.monthly_token_budget is not None
                    and counts.month_tokens >= key.monthly_token_budget):
                wait = max(1, math.ceil(counts.month_end * DAY - now))
                raise Refused("budget_exceeded", wait, "This key's monthly token budget of "
                              f"{key.monthly_token_budget} is spent; it renews on the first "
                              "of the month, 00:00 UTC.")
        if key.rate_limit_rpm is not None or key.tpm_limit is not None:
            limits = self._limits_of(key.id, now)
            rpm = key.rate_limit_rpm
            if rpm is not None:
                allowance = limits.refill(rpm, now)
                if allowance < 1.0 - 1e-9:
                    wait = max(1, math.ceil((1.0 - allowance) * 60.0 / rpm - 1e-9))
                    raise Refused("rate_limited", wait, f"This key's rate limit of {rpm} "
                                  f"requests per minute is reached; retry in {wait} s.")
            tpm = key.tpm_limit
            if tpm is not None and limits.tokens_in_minute(now) >= tpm:
                wait = _tpm_wait(limits, tpm, now)
                raise Refused("token_rate_limited", wait, f"This key's limit of {tpm} tokens "
                              f"per minute is reached; retry in {wait} s.")

    def admit(self, key: KeyRecord) -> Sequence[tuple[bytes, bytes]]:
        """The request passed :meth:`check` and every other refusal: take its request from
        the key's bucket. Returns the ``x-ratelimit-remaining-*`` headers to send."""
        if key.rate_limit_rpm is None and key.tpm_limit is None:
            return _NO_HEADERS
        headers: list[tuple[bytes, bytes]] = []
        now = self._clock.seconds()
        limits = self._limits_of(key.id, now)
        if key.rate_limit_rpm is not None:
            limits.allowance = max(0.0, limits.refill(key.rate_limit_rpm, now) - 1.0)
            headers.append((b"x-ratelimit-remaining-requests",
                            b"%d" % int(limits.allowance + 1e-9)))
        if key.tpm_limit is not None:
            left = max(0, key.tpm_limit - limits.tokens_in_minute(now))
            headers.append((b"x-ratelimit-remaining-tokens", b"%d" % left))
        return headers


def _tpm_wait(limits: _Limits, tpm: int, now: float) -> int:
    """Seconds until the tokens of the last minute fall below ``tpm``."""
    total = limits.window_tokens
    for at, tokens in limits.window:
        total -= tokens
        if total < tpm:
            return max(1, math.ceil(at + 60.0 - now))
    return 1


def refusal_headers(code: str) -> list[tuple[bytes, bytes]]:
    """A refused request's remaining count of what refused it: none left."""
    if code == "rate_limited":
        return [(b"x-ratelimit-remaining-requests", b"0")]
    if code == "token_rate_limited":
        return [(b"x-ratelimit-remaining-tokens", b"0")]
    return []


def legacy_ring(config: Any) -> KeyRing:
    """A ring of the one key in an API config (``key_hash``): for runtimes made without the
    store's keys (tests that build configs by hand); no limits, no usage."""
    return KeyRing([KeyRecord(0, config.id, "default", config.key_hash, config.key_prefix,
                              None, None, config.created_at, None, None, None, None, None,
                              None, None)])
