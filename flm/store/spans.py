"""Time windows as id bounds: a small summary of ``request_logs`` by blocks of ids.

``created_at`` is arrival time and ``id`` the order rows are recorded in (when requests
end), so time only nearly follows id. ``request_log_spans`` keeps, for each block of
``2**SHIFT`` ids, the lowest and highest ``created_at`` ever written to it. From it:

* every row with ``created_at >= since`` has ``id >= lower(since)``;
* every row with ``created_at < until`` has ``id < upper(until)``,

exactly, however far out of order rows are. A window query then searches an id range
(any index ending in ``id`` serves it) and filters on ``created_at`` inside it, touching
at most the two edge blocks beyond the rows it returns. Deleted rows leave their block's
span as it was: wider than needed, never wrong. Rows written without :func:`note` (tools,
old versions) are beyond the last block noted, and the bounds leave them in.
"""

from __future__ import annotations

from typing import Any

SHIFT = 10  # 1,024 ids a block: 1M rows are ~1,000 span rows, scanned in well under 1 ms


def last_id(c: Any) -> int:
    return int(c.execute("SELECT coalesce(max(id), 0) FROM request_logs").fetchone()[0])


def first_id(c: Any) -> int:
    return int(c.execute("SELECT coalesce(min(id), 0) FROM request_logs").fetchone()[0])


def note(c: Any, first_id: int) -> None:
    """Widen the spans of the blocks holding rows from ``first_id`` on (just written)."""
    c.execute(
        "INSERT INTO request_log_spans (block, min_created, max_created) "
        f"SELECT id >> {SHIFT:d}, min(created_at), max(created_at) FROM request_logs "
        "WHERE id >= ? GROUP BY 1 ORDER BY 1 ON CONFLICT (block) DO UPDATE SET "
        # CASE, not two-argument min/max (SQLite only; LEAST/GREATEST are PostgreSQL's).
        "min_created = CASE WHEN excluded.min_created < request_log_spans.min_created "
        "THEN excluded.min_created ELSE request_log_spans.min_created END, "
        "max_created = CASE WHEN excluded.max_created > request_log_spans.max_created "
        "THEN excluded.max_created ELSE request_log_spans.max_created END", (first_id,))


def repair(c: Any) -> None:
    """Note rows written without :func:`note` (after the last block noted)."""
    last = c.execute("SELECT max(block) FROM request_log_spans").fetchone()[0]
    note(c, 0 if last is None else last << SHIFT)


def lower(c: Any, since: float) -> int:
    """Every row with ``created_at >= since`` has an id at least this."""
    row = c.execute("SELECT min(block) FROM request_log_spans WHERE max_created >= ?",
                    (since,)).fetchone()
    if row[0] is not None:
        return int(row[0]) << SHIFT
    last = c.execute("SELECT max(block) FROM request_log_spans").fetchone()[0]
    return 0 if last is None else (int(last) + 1) << SHIFT


def upper(c: Any, until: float) -> int | None:
    """Every row with ``created_at < until`` has an id below this (None: no bound)."""
    last = c.execute("SELECT max(block) FROM request_log_spans").fetchone()[0]
    if last is None or last_id(c) >> SHIFT > last:
        return None  # rows beyond the spans: leave them all in
    row = c.execute("SELECT max(block) FROM request_log_spans WHERE min_created < ?",
                    (until,)).fetchone()
    return 0 if row[0] is None else (int(row[0]) + 1) << SHIFT


def bounds(c: Any, since: float | None, until: float | None) -> tuple[int | None, int | None]:
    """``(lo, hi)``: rows in ``[since, until)`` all have ``lo <= id < hi`` (None: open)."""
    lo = lower(c, since) if since is not None else None
    hi = upper(c, until) if until is not None else None
    return (lo or None), hi


def forget_below(c: Any, first_id: int) -> None:
    """Drop the spans of blocks wholly below ``first_id`` (their rows are gone)."""
    c.execute("DELETE FROM request_log_spans WHERE block < ?", (first_id >> SHIFT,))
