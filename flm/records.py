"""Plain values the store hands out."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import attrs


def utc_iso(epoch: float) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``, as every time in the admin API."""
    return (datetime.fromtimestamp(epoch, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"))


@attrs.frozen
class ApiRecord:
    id: int
    name: str
    host: str
    port: int
    model: str
    status: str
    status_reason: str | None
    key_hash: str
    key_prefix: str
    max_concurrent: int
    max_queue: int
    queue_timeout_s: float
    upstream_timeout_s: float
    rate_limit_rpm: int | None
    priority: int
    allow_unknown_model: bool
    created_at: str
    updated_at: str
    last_used_at: str | None
    insecure: bool = False  # plain HTTP even beyond loopback
    tls_cert: str | None = None  # PEM paths; None: the settings' tls_cert / tls_key
    tls_key: str | None = None
    backends: tuple[str, ...] | None = None  # None: every enabled backend with its model
    affinity: str | None = None  # None or "user"

    def public(self) -> dict[str, Any]:
        """The API object of the contract: everything but the key hash."""
        d = attrs.asdict(self)
        del d["key_hash"]
        d["backends"] = None if self.backends is None else list(self.backends)
        return d


API_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(ApiRecord))


@attrs.frozen
class KeyRecord:
    """One key of an API: its secret's hash (and, during a rotation's grace period, the
    previous one's), expiry and limits. Times compared on the request path are epoch s."""

    id: int
    api_id: int
    name: str
    key_hash: str
    prefix: str
    old_hash: str | None
    grace_until: float | None
    created_at: str
    expires_at: float | None
    revoked_at: str | None
    last_used_at: str | None
    rate_limit_rpm: int | None
    tpm_limit: int | None
    daily_token_budget: int | None
    monthly_token_budget: int | None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float, usage: tuple[int, int, int]) -> dict[str, Any]:
        """The key object of the contract: never the hashes."""
        grace = self.grace_until if self.grace_until is not None and now < self.grace_until \
            else None
        return {"id": self.id, "name": self.name, "prefix": self.prefix,
                "status": self.status(now), "created_at": self.created_at,
                "expires_at": None if self.expires_at is None else utc_iso(self.expires_at),
                "last_used_at": self.last_used_at,
                "grace_until": None if grace is None else utc_iso(grace),
                "rate_limit_rpm": self.rate_limit_rpm, "tpm_limit": self.tpm_limit,
                "daily_token_budget": self.daily_token_budget,
                "monthly_token_budget": self.monthly_token_budget,
                "usage": {"requests_today": usage[0], "tokens_today": usage[1],
                          "tokens_month": usage[2]}}


@attrs.frozen
class BackendRecord:
    """A model server as stored: what the admin API sets (state is live, not stored)."""

    name: str
    url: str
    kind: str
    max_concurrent: int
    weight: int
    enabled: bool
    created_at: str
    updated_at: str


BACKEND_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(BackendRecord))


KEY_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(KeyRecord))
