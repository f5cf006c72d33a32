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

    def public(self) -> dict[str, Any]:
        """The API object of the contract: everything but the key hash."""
        d = attrs.asdict(self)
        del d["key_hash"]
        return d


API_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(ApiRecord))
