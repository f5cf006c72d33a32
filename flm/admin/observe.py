"""What the admin API shows about traffic: logs, metrics, the process, Prometheus.

Query parameters are checked here; every rejection is a 422 naming the parameter.
Routes live in ``flm.admin.app``.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from prometheus_client import exposition, generate_latest

from flm.admin.errors import AdminError
from flm.admin.validation import decode_cursor, encode_cursor, invalid, page_limit
from flm.observe.minutes import Minute
from flm.store import logs, utc_iso

DAY = 86400.0
# generate_latest writes the classic text format, version 0.0.4.
PROMETHEUS_CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4",
                                  "text/plain; version=0.0.4; charset=utf-8").encode()
_LOG_PARAMS = {b"limit", b"cursor", b"status", b"since", b"until", b"key"}


# Times from 1970 to the end of year 9999: what ``utc_iso`` can print and SQLite can hold.
EARLIEST, LATEST = 0.0, 253402300799.0


def parse_time(field: str, raw: str) -> float:
    """ISO 8601 (no offset means UTC) or epoch seconds, from 1970 to year 9999."""
    try:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise invalid(field, "must be an ISO 8601 time such as 2024-05-01T12:00:00Z or "
                                 "epoch seconds") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        try:
            value = when.timestamp()
        except (OverflowError, ValueError):
            value = math.inf
    if not EARLIEST <= value <= LATEST:
        raise invalid(field, "must be a time from 1970-01-01 to 9999-12-31")
    return value


def _arg(args: dict[bytes, list[bytes]], name: str) -> str | None:
    values = args.get(name.encode())
    if not values or not values[0]:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(name, "is not valid UTF-8") from None


def _range(args: dict[bytes, list[bytes]]) -> tuple[float | None, float | None]:
    since, until = _arg(args, "since"), _arg(args, "until")
    lo = parse_time("since", since) if since is not None else None
    hi = parse_time("until", until) if until is not None else None
    if lo is not None and hi is not None and hi <= lo:
        raise invalid("until", "must be after since")
    return lo, hi


def _check_params(args: dict[bytes, list[bytes]], allowed: set[bytes]) -> None:
    for name in args:
        if name not in allowed:
            raise AdminError(422, "unknown_field",
                             f"{name.decode('utf-8', 'replace')[:64]}: unknown parameter")


def log_item(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "created_at": utc_iso(row["created_at"])}


class Observe:
    """The operations behind the logs, metrics and system routes."""

    def __init__(self, store: Any, *, metrics: Any, monitor: Any, registry: Any,
                 logbuffer: Any, clock: Any) -> None:
        self.store = store
        self.metrics = metrics
        self.monitor = monitor
        self.registry = registry
        self.logbuffer = logbuffer
        self.clock = clock

    async def _api_id(self, field: str | None, ref: str) -> int:
        api = await self.store.get_api(ref)
        if api is None:
            if field is not None:
                raise invalid(field, f"no API with id or name {ref[:100]!r}")
            raise AdminError(404, "not_found", f"No API with id or name {ref[:100]!r}.")
        return int(api.id)

    async def logs(self, ref: str | None, args: dict[bytes, list[bytes]]) -> dict[str, Any]:
        """One page of ``ref``'s logs (all APIs', or ``?api=``'s, when ``ref`` is None)."""
        _check_params(args, _LOG_PARAMS | ({b"api"} if ref is None else set()))
        limit = page_limit(args)
        cursor = _arg(args, "cursor")
        before = decode_cursor(b"l", cursor) if cursor else None
        status_raw = _arg(args, "status")
        status = None
        if status_raw is not None:
            try:
                status = logs.parse_status(status_raw)
            except ValueError:
                raise invalid("status", "must be a code such as 503 or a class such as "
                                        "5xx") from None
        since, until = _range(args)
        api_ref = ref if ref is not None else _arg(args, "api")
        api_id = None
        if api_ref is not None:
            api_id = await self._api_id(None if ref is not None else "api", api_ref)
        key_ref = _arg(args, "key")
        key_id = None if key_ref is None else await self._key_id(api_id, key_ref)
        items, next_id = await logs.logs_page(self.store, api_id, limit, before, status,
                                              since, until, key_id)
        return {"items": [log_item(r) for r in items],
                "next_cursor": encode_cursor(b"l", next_id) if next_id is not None else None}

    async def _key_id(self, api_id: int | None, ref: str) -> int:
        """``?key=``: a key's name (of the API) or id."""
        if api_id is None:
            if not ref.isdigit() or len(ref) > 18:
                raise invalid("key", "name a key by its id, or give ?api= too")
            return int(ref)
        key = await self.store.get_key(api_id, ref)
        if key is None:
            raise invalid("key", f"this API has no key with id or name {ref[:100]!r}")
        return int(key.id)

    async def api_metrics(self, ref: str, args: dict[bytes, list[bytes]]) -> dict[str, Any]:
        _check_params(args, {b"since", b"until", b"key"})
        since, until = _range(args)
        api_id = await self._api_id(None, ref)
        if until is None:
            if since is not None and since >= LATEST:
                raise invalid("since", "must be before 9999-12-31T23:59:59Z")
            until = self.clock.seconds() if since is None else min(
                max(since + 60, self.clock.seconds()), LATEST)
        if since is None:
            since = until - DAY
        if until <= since:
            raise invalid("until", "must be after since")
        bucket_s = logs.bucket_size(since, until)
        key_ref = _arg(args, "key")
        if key_ref is not None:
            key_id = await self._key_id(api_id, key_ref)
            return {"bucket_s": bucket_s, "since": utc_iso(since), "until": utc_iso(until),
                    "buckets": await _key_buckets(self.store, key_id, since, until, bucket_s)}
        rows = await logs.metrics_range(self.store, api_id, since, until, bucket_s)
        merged = {r[0]: r for r in rows}
        for m in self.metrics.pending(api_id, since, until) if self.metrics else ():
            start = m[1] // bucket_s * bucket_s
            have = merged.get(start)
            if have is None:
                merged[start] = [start, *m[2:]]
                continue
            for i in (1, 2, 3, 6, 7):
                have[i] += m[i + 1]
            for i in (4, 5):
                have[i] = max((v for v in (have[i], m[i + 1]) if v is not None), default=None)
        return {"bucket_s": bucket_s, "since": utc_iso(since), "until": utc_iso(until),
                "buckets": [_bucket(r) for _, r in sorted(merged.items())]}

    def system(self) -> dict[str, Any]:
        sample = (self.monitor.last or self.monitor.sample()) if self.monitor else None
        runtimes = list(self.registry.runtimes.values()) if self.registry else []
        gate = self.registry.upstream.gate if self.registry else None
        apis = {rt.config.name: {"id": rt.id, "in_flight": rt.in_flight,
                                 "queue_depth": rt.gate.waiting,
                                 "connections": len(rt.site.channels) if rt.site else 0}
                for rt in runtimes}
        return {
            "rss_bytes": self.monitor.rss_now() if self.monitor else None,
            "memory_limit_bytes": self.monitor.memory_limit if self.monitor else None,
            "cpu_percent": sample.cpu_percent if sample else None,
            "sampled_at": utc_iso(sample.at) if sample else None,
            "threads": sample.threads if sample else None,
            "uptime_s": round(self.monitor.uptime_s, 3) if self.monitor else None,
            "running_apis": len(runtimes),
            "open_connections": sum(a["connections"] for a in apis.values()),
            "in_flight": sum(a["in_flight"] for a in apis.values()),
            "queue_depth": {name: a["queue_depth"] for name, a in apis.items()},
            "backend": {"in_use": gate.in_use if gate else 0,
                        "waiting": gate.waiting if gate else 0,
                        "limit": gate.limit if gate else 0},
            "log_rows": {"buffered": len(self.logbuffer.rows), "written": self.logbuffer.written,
                         "dropped": self.logbuffer.dropped},
            "dropped_log_rows": self.logbuffer.dropped,
            "apis": apis,
        }

    def prometheus(self) -> bytes:
        return bytes(generate_latest(self.metrics.prometheus))


def _bucket(r: list[Any]) -> dict[str, Any]:
    start, count, errors, sum_ms, p95_ms, p95_ttfb, prompt, completion = r
    return {"start": utc_iso(start), "request_count": count,
            "error_rate": errors / count if count else 0.0,
            "avg_response_ms": sum_ms / count if count else None,
            "p95_response_ms": p95_ms, "p95_ttfb_ms": p95_ttfb,
            "prompt_tokens": prompt, "completion_tokens": completion}


async def _key_buckets(store: Any, key_id: int, since: float, until: float,
                       bucket_s: int) -> list[dict[str, Any]]:
    """One key's buckets, from its log rows (rollups are per API, not per key)."""
    buckets: dict[int, Minute] = {}
    for row in await logs.key_rows(store, key_id, since, until):
        start = int(row[1] // bucket_s * bucket_s)
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = Minute()
        bucket.add(row)
    return [_bucket(m.row(0, start)[1:]) for start, m in sorted(buckets.items())]
