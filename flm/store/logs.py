"""Queries over request logs and performance rollups: pages, retention, metric ranges.

Every function takes the :class:`~flm.store.db.Store` and runs one named interaction
(or, for pruning, many short ones). Pages are keyset-paginated on ``id``: no OFFSET, so
a page costs the same at row 10 and at row 5,000,000.
"""

from __future__ import annotations

import math
import re
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

from flm.store import spans
from flm.store.db import LOG_COLUMNS

LOG_FIELDS = ("id", *LOG_COLUMNS)
METRIC_COLUMNS = ("api_id", "bucket_start", "request_count", "error_count", "sum_response_ms",
                  "p95_response_ms", "p95_ttfb_ms", "prompt_tokens", "completion_tokens")
# Coarser buckets for long ranges: the smallest that keeps a range under MAX_BUCKETS.
BUCKET_SIZES = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 1500
_STATUS = re.compile(r"^([1-5])(?:xx|XX|(\d\d))$")


def parse_status(value: str) -> tuple[int, int | None]:
    """``'503'`` -> ``(5, 503)``; ``'5xx'`` -> ``(5, None)``; anything else ValueError."""
    m = _STATUS.match(value)
    if not m:
        raise ValueError(value)
    return int(m.group(1)), (int(value) if m.group(2) else None)


def _where(api_id: int | None, status: tuple[int, int | None] | None, before_id: int | None,
           since: float | None, until: float | None, lo_id: int | None = None,
           hi_id: int | None = None, key_id: int | None = None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if key_id is not None:
        # One key's rows (its API's too: key ids are global), through (key_id, id).
        clauses.append("key_id = ?")
        args.append(key_id)
    elif api_id is not None:
        clauses.append("api_id = ?")
        args.append(api_id)
    if status is not None:
        # ``status / 100`` exactly as in the indexes request_logs_class, _api_class.
        clauses.append("status / 100 = ?")
        args.append(status[0])
        if status[1] is not None:
            clauses.append("+status = ?")  # '+': walk the class index, not (api_id, id)
            args.append(status[1])
    # A time window is an id range (flm.store.spans) that every index ending in id
    # searches; '+created_at' then filters exactly inside it.
    below = min((b for b in (before_id, hi_id) if b is not None), default=None)
    if below is not None:
        clauses.append("id < ?")
        args.append(below)
    if lo_id is not None:
        clauses.append("id >= ?")
        args.append(lo_id)
    if since is not None:
        clauses.append("+created_at >= ?")
        args.append(since)
    if until is not None:
        clauses.append("+created_at < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def logs_sql(api_id: int | None, limit: int, before_id: int | None = None,
             status: tuple[int, int | None] | None = None, since: float | None = None,
             until: float | None = None, lo_id: int | None = None, hi_id: int | None = None,
             key_id: int | None = None) -> tuple[str, list[Any]]:
    """The statement of :func:`logs_page` (also for ``EXPLAIN QUERY PLAN``); ``lo_id``,
    ``hi_id``: the window's id bounds from :func:`flm.store.spans.bounds`."""
    where, args = _where(api_id, status, before_id, since, until, lo_id, hi_id, key_id)
    return (f"SELECT {', '.join(LOG_FIELDS)} FROM request_logs{where} "
            "ORDER BY id DESC LIMIT ?", [*args, limit])


async def logs_page(store: Any, api_id: int | None, limit: int, before_id: int | None = None,
                    status: str | tuple[int, int | None] | None = None,
                    since: float | None = None, until: float | None = None,
                    key_id: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` rows newest first, and the id to pass as ``before_id`` for the next
    page (None on the last page). ``status`` is a code or class string, or parsed."""
    if isinstance(status, str):
        status = parse_status(status)

    def txn(c: Any) -> list[tuple[Any, ...]]:
        lo, hi = spans.bounds(c, since, until)
        sql, args = logs_sql(api_id, limit + 1, before_id, status, since, until, lo, hi,
                             key_id)
        c.execute(sql, args)
        return c.fetchall()
    rows = await store.run_read("logs_page", txn)
    more = len(rows) > limit
    items = [dict(zip(LOG_FIELDS, r)) for r in rows[:limit]]
    return items, (items[-1]["id"] if more else None)


async def prune(store: Any, older_than: float, max_rows: int, batch: int = 2000,
                keep_going: Callable[[], bool] = lambda: True,
                batch_ids_before: float | None = None,
                usage_before_day: int | None = None) -> int:
    """Delete rows older than ``older_than`` (epoch s), then the oldest past ``max_rows``;
    also rollups older than ``older_than``. Rows go by id range: those below the window's
    lower id bound are all old, those between the bounds are checked one by one. Each
    batch of up to ``batch`` rows is its own short write transaction, so log flushes and
    admin writes slip in between; ``keep_going() == False`` stops after the batch under
    way. Batch ids and tombstones of deleted APIs from before ``batch_ids_before`` go too
    (a retry, or a row buffered, that late is not expected: see
    :func:`flm.store.db.write_logs`), and keys' daily usage rows of days before
    ``usage_before_day``. Returns the log rows deleted."""
    def bounds(c: Any) -> tuple[int, int]:
        hi = spans.upper(c, older_than)
        lo = spans.lower(c, older_than)
        return lo, max(lo, spans.last_id(c) + 1 if hi is None else hi)

    def by_age(c: Any, start: int, stop: int, check: bool) -> tuple[int, int | None]:
        first = c.execute("SELECT min(id) FROM request_logs WHERE id >= ?",
                          (start,)).fetchone()[0]
        if first is None or first >= stop:
            return 0, None
        end = min(first + batch, stop)
        c.execute("DELETE FROM request_logs WHERE id >= ? AND id < ?"
                  + (" AND created_at < ?" if check else ""),
                  (first, end, older_than) if check else (first, end))
        return int(c.rowcount), end

    deleted = 0
    all_old_below, maybe_old_below = await store.run_read("prune_bounds", bounds)
    for start, stop, check in ((0, all_old_below, False), (all_old_below, maybe_old_below,
                                                          True)):
        cursor: int | None = start
        while cursor is not None and cursor < stop:
            n, cursor = await store.run_write("prune_logs_by_age", by_age, cursor, stop, check)
            deleted += n
            if not keep_going():
                return deleted

    def excess(c: Any) -> int:
        # max - min + 1 bounds the count from above and costs two index probes.
        c.execute("SELECT min(id), max(id) FROM request_logs")
        lo, hi = c.fetchone()
        if lo is None or hi - lo + 1 <= max_rows:
            return 0
        c.execute("SELECT count(*) FROM request_logs")
        return max(0, int(c.fetchone()[0]) - max_rows)

    def oldest(c: Any, n: int) -> int:
        c.execute("DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs "
                  "ORDER BY id LIMIT ?)", (n,))
        return int(c.rowcount)

    left = await store.run_read("prune_logs_count", excess)
    while left > 0 and keep_going():
        n = await store.run_write("prune_logs_by_count", oldest, min(batch, left))
        if n == 0:
            break
        deleted += n
        left -= n
    if keep_going():
        await store.run_write("prune_spans", lambda c: spans.forget_below(c, spans.first_id(c)))
        await prune_metrics(store, older_than)
        if batch_ids_before is not None:
            await store.run_write("prune_log_batches", _forget_batches, batch_ids_before)
        if usage_before_day is not None:
            await store.run_write("prune_key_usage", lambda c: c.execute(
                "DELETE FROM key_usage WHERE day < ?", (usage_before_day,)))
    return deleted


def _forget_batches(c: Any, before: float) -> None:
    """Log batch ids and deleted APIs' tombstones older than ``before``."""
    c.execute("DELETE FROM log_batches WHERE written_at < ?", (before,))
    c.execute("DELETE FROM deleted_apis WHERE purged_at < ?", (before,))


async def prune_metrics(store: Any, older_than: float, apis_per_txn: int = 50) -> None:
    """Rollups older than ``older_than``, per API through the primary key."""
    def api_ids(c: Any) -> list[int]:
        c.execute("SELECT DISTINCT api_id FROM performance_metrics")
        return [r[0] for r in c.fetchall()]

    def txn(c: Any, ids: list[int]) -> None:
        c.executemany("DELETE FROM performance_metrics WHERE api_id = ? AND bucket_start < ?",
                      [(i, older_than) for i in ids])
    ids = await store.run_read("prune_metrics_apis", api_ids)
    for start in range(0, len(ids), apis_per_txn):
        await store.run_write("prune_metrics", txn, ids[start:start + apis_per_txn])


async def unrolled_rows(store: Any, upto_id: int, chunk: int = 20_000,
                        node: str | None = None) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Log rows (``LOG_COLUMNS``) up to ``upto_id`` after the newest stored rollup minute:
    the rows whose rollups a crash lost. In chunks of ids, oldest first. With ``node``,
    only that node's rows (and rows without one): other nodes roll up their own."""
    mine = "" if node is None else " AND (node = ? OR node IS NULL)"
    extra = () if node is None else (node,)
    def first(c: Any) -> tuple[float | None, int]:
        newest = c.execute("SELECT max(bucket_start) FROM performance_metrics").fetchone()[0]
        since = None if newest is None else newest + 60
        return since, (0 if since is None else spans.lower(c, since))

    def rows(c: Any, start: int, since: float | None) -> list[tuple[Any, ...]]:
        c.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM request_logs WHERE id >= ? AND "
                  f"id < ? AND id <= ? AND +created_at >= ?{mine} ORDER BY id",
                  (start, start + chunk, upto_id, -math.inf if since is None else since,
                   *extra))
        return c.fetchall()
    since, start = await store.run_read("unrolled_bounds", first)
    while start <= upto_id:
        found = await store.run_read("unrolled_rows", rows, start, since)
        if found:
            yield found
        start += chunk


_UPSERT = (
    f"INSERT INTO performance_metrics AS m ({', '.join(METRIC_COLUMNS)}) VALUES "
    f"({', '.join('?' * len(METRIC_COLUMNS))}) ON CONFLICT (api_id, bucket_start) DO UPDATE SET "
    "request_count = m.request_count + excluded.request_count, "
    "error_count = m.error_count + excluded.error_count, "
    "sum_response_ms = m.sum_response_ms + excluded.sum_response_ms, "
    # A minute rolled up twice (rows recorded late, or a restart) keeps the higher p95
    # (CASE: two-argument max is SQLite's only).
    "p95_response_ms = CASE WHEN excluded.p95_response_ms > m.p95_response_ms "
    "THEN excluded.p95_response_ms ELSE coalesce(m.p95_response_ms, "
    "excluded.p95_response_ms) END, "
    "p95_ttfb_ms = CASE WHEN excluded.p95_ttfb_ms > m.p95_ttfb_ms "
    "THEN excluded.p95_ttfb_ms ELSE coalesce(m.p95_ttfb_ms, excluded.p95_ttfb_ms) END, "
    "prompt_tokens = m.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = m.completion_tokens + excluded.completion_tokens")


async def upsert_metrics(store: Any, rows: Iterable[Sequence[Any]]) -> None:
    """Add per-minute aggregates (ordered as ``METRIC_COLUMNS``) in one transaction."""
    rows = list(rows)
    if not rows:
        return

    def txn(c: Any) -> None:
        c.executemany(_UPSERT, rows)
    await store.run_write("upsert_metrics", txn)


def bucket_size(since: float, until: float) -> int:
    """60 s, or the smallest coarser size that keeps the range under ``MAX_BUCKETS``."""
    span = max(0.0, until - since)
    for size in BUCKET_SIZES:
        if span / size <= MAX_BUCKETS:
            return size
    return BUCKET_SIZES[-1]


def metrics_sql(api_id: int, since: float, until: float, bucket_s: int
                ) -> tuple[str, list[Any]]:
    """The statement of :func:`metrics_range` (also for ``EXPLAIN QUERY PLAN``)."""
    where = "WHERE api_id = ? AND bucket_start >= ? AND bucket_start < ?"
    args = [api_id, int(since) // 60 * 60, until]
    if bucket_s == 60:  # the stored minutes as they are, in primary-key order: no sort
        return (f"SELECT {', '.join(METRIC_COLUMNS[1:])} FROM performance_metrics {where} "
                "ORDER BY bucket_start", args)
    return ("SELECT bucket_start / ? * ? AS b, sum(request_count), sum(error_count), "
            "sum(sum_response_ms), max(p95_response_ms), max(p95_ttfb_ms), "
            f"sum(prompt_tokens), sum(completion_tokens) FROM performance_metrics {where} "
            "GROUP BY b ORDER BY b", [bucket_s, bucket_s, *args])


async def metrics_range(store: Any, api_id: int, since: float, until: float,
                        bucket_s: int) -> list[list[Any]]:
    """``[start, count, errors, sum_ms, p95_ms, p95_ttfb_ms, prompt, completion]`` per
    bucket with requests, oldest first. Coarse buckets keep the highest minute p95."""
    sql, args = metrics_sql(api_id, since, until, bucket_s)

    def txn(c: Any) -> list[list[Any]]:
        c.execute(sql, args)
        return [list(r) for r in c.fetchall()]
    return await store.run_read("metrics_range", txn)


async def key_rows(store: Any, key_id: int, since: float, until: float
                   ) -> list[tuple[Any, ...]]:
    """One key's log rows (``LOG_COLUMNS``) in a window, through (key_id, id): the per-key
    metrics are computed from the logs (the rollups are per API)."""
    def txn(c: Any) -> list[tuple[Any, ...]]:
        lo, hi = spans.bounds(c, since, until)
        c.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM request_logs WHERE key_id = ? "
                  "AND id >= ? AND id < ? AND +created_at >= ? AND +created_at < ?",
                  (key_id, lo or 0, hi if hi is not None else 2**63 - 1, since, until))
        return c.fetchall()
    return await store.run_read("key_log_rows", txn)
