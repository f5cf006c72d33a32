"""Data growth: the admin queries the dashboard runs, at 10 / 100 / 1,000 APIs and
10k / 100k / 1M log rows.

    .venv/bin/python -m bench.db_growth [--apis 10,100,1000] [--rows 10000,100000,1000000]
                                        [--reps 300] [--keep DIR]

Each database is generated straight into SQLite (the real schema, ``executemany``), then
opened with the real :class:`flm.store.Store` (adbapi, one connection) and every query is
timed through the functions the admin API calls: median and p99 in ms, from the
``await`` to its result (the thread hop included). ``EXPLAIN QUERY PLAN`` is printed
once per query. Target: every one <= 5 ms at 1,000 APIs and 1M rows.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet import defer, task

from flm import keys
from flm.store import API_FIELDS, Store, logs
from flm.store.db import _INSERT_LOG
from flm.store.migrations import migrate

NOW = 1_750_000_000.0
DAY = 86400


def build(path: Path, n_apis: int, n_rows: int, seed: int = 1) -> float:
    """Generate the database; return the seconds it took."""
    started = time.perf_counter()
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    cols = [c for c in API_FIELDS if c != "id"]
    apis = []
    for i in range(n_apis):
        key = f"flm-bench-{i:06d}" + "x" * 30
        apis.append({"name": f"api-{i}", "host": "127.0.0.1", "port": 10000 + i,
                     "model": "llama3.2:1b", "status": "running" if i % 10 == 0 else "stopped",
                     "status_reason": None, "key_hash": keys.hash_key(key),
                     "key_prefix": keys.key_prefix(key), "max_concurrent": 1, "max_queue": 32,
                     "queue_timeout_s": 60.0, "upstream_timeout_s": 300.0,
                     "rate_limit_rpm": None, "priority": 0, "allow_unknown_model": 0,
                     "created_at": "2025-01-01T00:00:00.000Z",
                     "updated_at": "2025-01-01T00:00:00.000Z", "last_used_at": None})
    conn.executemany(f"INSERT INTO apis ({', '.join(cols)}) VALUES "
                     f"({', '.join('?' * len(cols))})", [[a[c] for c in cols] for a in apis])
    statuses = [200] * 90 + [400, 404, 429, 429, 499] + [500, 502, 503, 503, 504]
    span = 30 * DAY
    chunk = 100_000
    for start in range(0, n_rows, chunk):
        rows = []
        for i in range(start, min(n_rows, start + chunk)):
            ms = rng.expovariate(1 / 400.0)
            rows.append((rng.randint(1, n_apis), NOW - span + span * i / n_rows, "POST",
                         "/v1/chat/completions", rng.choice(statuses), 0.2, ms * 0.2, ms,
                         ms + 0.5, 300, 900, "llama3.2:1b", 20, 60, f"req-{i}", None))
        conn.executemany(_INSERT_LOG, rows)
    # per-minute rollups of the last day, as many minutes per API as it has requests
    per_api = min(1440, max(1, n_rows // n_apis))
    first = int(NOW - DAY) // 60 * 60
    metric_rows = ((a, first + 60 * m, 3, 0, 1200.0, 800.0, 90.0, 60, 180)
                   for a in range(1, n_apis + 1)
                   for m in sorted(rng.sample(range(1440), per_api)))
    conn.executemany("INSERT INTO performance_metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     metric_rows)
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def plan(path: Path, sql: str, args: list[Any]) -> str:
    conn = sqlite3.connect(path)
    try:
        return "; ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    finally:
        conn.close()


async def timed(reps: int, fn: Callable[[random.Random], Awaitable[Any]]) -> tuple[float, float]:
    rng = random.Random(2)
    for _ in range(10):  # warm the page cache and the pool's thread
        await fn(rng)
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        await fn(rng)
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def measure(reactor: Any, path: Path, n_apis: int, n_rows: int, reps: int
                  ) -> list[tuple[str, float, float, str]]:
    store = Store(path, reactor=reactor)
    store.startService()
    conn = sqlite3.connect(path)
    mid_id = n_rows // 2
    conn.close()
    api = lambda rng: rng.randint(1, n_apis)  # noqa: E731
    queries: list[tuple[str, Callable[[random.Random], Awaitable[Any]], str, list[Any]]] = [
        ("list APIs page (50)", lambda r: store.list_apis(limit=51),
         "SELECT id FROM apis ORDER BY id LIMIT ?", [51]),
        ("list APIs page ?status=running", lambda r: store.list_apis(limit=51,
                                                                     status="running"),
         "SELECT id FROM apis WHERE status = ? AND id > ? ORDER BY id LIMIT ?",
         ["running", 0, 51]),
        ("one API", lambda r: store.get_api(api(r)), "SELECT * FROM apis WHERE id = ?", [1]),
        ("logs page (50)", lambda r: logs.logs_page(store, api(r), 50),
         *logs.logs_sql(1, 51)),
        ("logs page, deep cursor", lambda r: logs.logs_page(store, api(r), 50, mid_id),
         *logs.logs_sql(1, 51, mid_id)),
        ("logs page ?status=5xx", lambda r: logs.logs_page(store, api(r), 50, None, "5xx"),
         *logs.logs_sql(1, 51, None, (5, None))),
        ("logs page ?status=503", lambda r: logs.logs_page(store, api(r), 50, None, "503"),
         *logs.logs_sql(1, 51, None, (5, 503))),
        ("all APIs' logs page", lambda r: logs.logs_page(store, None, 50),
         *logs.logs_sql(None, 51)),
        ("metrics range 24 h (60 s)", lambda r: logs.metrics_range(
            store, api(r), NOW - DAY, NOW, 60), *logs.metrics_sql(1, NOW - DAY, NOW, 60)),
        ("metrics range 7 d (900 s)", lambda r: logs.metrics_range(
            store, api(r), NOW - 7 * DAY, NOW, 900),
         *logs.metrics_sql(1, NOW - 7 * DAY, NOW, 900)),
    ]
    results = []
    try:
        for name, fn, sql, args in queries:
            median, p99 = await timed(reps, fn)
            results.append((name, median, p99, plan(path, sql, args)))
    finally:
        await store.stopService()
    return results


async def main(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="flm-dbgrowth-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for n_rows in args.rows:
            for n_apis in args.apis:
                path = work / f"db-{n_apis}-{n_rows}.sqlite3"
                if path.exists():
                    path.unlink()
                built = build(path, n_apis, n_rows)
                size = path.stat().st_size / 1e6
                print(f"\n== {n_apis} APIs, {n_rows:,} log rows (built in {built:.1f} s, "
                      f"{size:.0f} MB)")
                results = await measure(reactor, path, n_apis, n_rows, args.reps)
                worst = 0.0
                for name, median, p99, query_plan in results:
                    print(f"  {name:32s} median {median:6.2f} ms   p99 {p99:6.2f} ms")
                    if args.plans:
                        print(f"  {'':32s} plan: {query_plan}")
                    worst = max(worst, p99)
                target = "PASS" if worst <= 5.0 else "MISS"
                print(f"  worst p99 {worst:.2f} ms: {target} (target <= 5 ms)")
                args.plans = False  # the plans are the same at every size; print them once
                for f in work.glob(f"db-{n_apis}-{n_rows}.sqlite3*"):
                    if not args.keep:
                        f.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--apis", type=_ints, default=[10, 100, 1000])
    p.add_argument("--rows", type=_ints, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--keep", help="build the databases here and keep them")
    args = p.parse_args()
    args.plans = True
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args)))


if __name__ == "__main__":
    run()
