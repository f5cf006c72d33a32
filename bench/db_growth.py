"""Data growth: the admin queries the dashboard runs, at 10 / 100 / 1,000 APIs and
10k / 100k / 1M log rows.

    .venv/bin/python -m bench.db_growth [--apis 10,100,1000] [--rows 10000,100000,1000000]
                                        [--reps 300] [--keep DIR] [--flush-s 30]

Each database is generated straight into SQLite (the real schema, ``executemany``), then
opened with the real :class:`flm.store.Store` (adbapi, one connection) and every query is
timed through the functions the admin API calls: median and p99 in ms, from the
``await`` to its result (the thread hop included). ``EXPLAIN QUERY PLAN`` is printed
once per query. Target: every one <= 5 ms at 1,000 APIs and 1M rows.

Then log flushes (500 rows every 100 ms, through ``Store.insert_logs``) run for
``--flush-s`` seconds while a dashboard-like reader pages through all APIs' logs (and old
windows, status filters) in a loop: the longest a flush waited for the writer connection
(``flm_store_query_wait_seconds{query="insert_logs"}``) must stay <= 50 ms. Rows arrive
slightly out of order (5% up to 5 minutes before they are recorded), as in production.
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
from flm.store import API_FIELDS, Store, logs, spans
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
                     "updated_at": "2025-01-01T00:00:00.000Z", "last_used_at": None,
                     "insecure": 0, "tls_cert": None, "tls_key": None})
    conn.executemany(f"INSERT INTO apis ({', '.join(cols)}) VALUES "
                     f"({', '.join('?' * len(cols))})", [[a[c] for c in cols] for a in apis])
    statuses = [200] * 90 + [400, 404, 429, 429, 499] + [500, 502, 503, 503, 504]
    span = 30 * DAY
    chunk = 100_000
    for start in range(0, n_rows, chunk):
        rows = []
        for i in range(start, min(n_rows, start + chunk)):
            ms = rng.expovariate(1 / 400.0)
            late = rng.uniform(0, 300) if rng.random() < 0.05 else 0.0
            rows.append((rng.randint(1, n_apis), NOW - span + span * i / n_rows - late, "POST",
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


def window_sql(path: Path, api_id: int | None, status: tuple[int, int | None] | None,
               since: float | None, until: float | None) -> tuple[str, list[Any]]:
    """The page statement with the window's id bounds, as ``logs_page`` builds it."""
    conn = sqlite3.connect(path)
    try:
        lo, hi = spans.bounds(conn, since, until)
    finally:
        conn.close()
    return logs.logs_sql(api_id, 51, None, status, since, until, lo, hi)


async def flushes_under_reads(reactor: Any, store: Store, n_apis: int, seconds: float
                              ) -> tuple[float, float, float, int]:
    """Flush 500 rows every 100 ms while a reader pages through logs without pause:
    (longest wait for the writer, p99 and longest flush, in ms; pages read)."""
    rng = random.Random(4)
    old = (NOW - 20 * DAY, NOW - 20 * DAY + 3600)
    state = {"stop": False, "pages": 0}

    async def reader() -> None:
        cursor = None
        while not state["stop"]:
            items, cursor = await logs.logs_page(store, None, 50, cursor)
            await logs.logs_page(store, None, 50, None, "5xx", *old)
            await logs.logs_page(store, rng.randint(1, n_apis), 50, None, None, *old)
            state["pages"] += 3
    reading = defer.Deferred.fromCoroutine(reader())
    store.timings.queries.pop("insert_logs", None)
    took = []
    t_end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < t_end:
        rows = [(rng.randint(1, n_apis), NOW + n + i / 1000, "POST", "/v1/chat/completions",
                 200, 0.2, 80.0, 400.0, 400.5, 300, 900, "llama3.2:1b", 20, 60,
                 f"new-{n}-{i}", None) for i in range(500)]
        t = time.perf_counter()
        await store.insert_logs(rows, {})
        took.append((time.perf_counter() - t) * 1000)
        n += 1
        await task.deferLater(reactor, 0.1, lambda: None)
    state["stop"] = True
    await reading
    took.sort()
    stat = store.timings.queries["insert_logs"]
    return (stat.max_wait * 1000, took[min(len(took) - 1, int(len(took) * 0.99))], took[-1],
            state["pages"])


def p99(samples: list[float]) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def timed(reps: int, fn: Callable[[random.Random], Awaitable[Any]]
                ) -> tuple[float, float, float]:
    """Median and p99 wall ms of one call, and p99 of the CPU ms the process spent on it
    (all threads: the query on its connection's thread and the hops). On a busy machine a
    wall-clock tail far above the CPU one is time spent waiting for a core, not work."""
    rng = random.Random(2)
    for _ in range(10):  # warm the page cache and the pool's thread
        await fn(rng)
    samples, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        await fn(rng)
        samples.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(samples), p99(samples), p99(cpu)


async def measure(reactor: Any, path: Path, n_apis: int, n_rows: int, reps: int,
                  flush_s: float = 0.0
                  ) -> tuple[list[tuple[str, float, float, float, str]], tuple[float, ...] | None]:
    store = Store(path, reactor=reactor)
    store.startService()
    conn = sqlite3.connect(path)
    mid_id = n_rows // 2
    conn.close()
    api = lambda rng: rng.randint(1, n_apis)  # noqa: E731
    old = (NOW - 20 * DAY, NOW - 20 * DAY + 3600)  # an hour, 20 days ago
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
        ("all APIs ?status=5xx", lambda r: logs.logs_page(store, None, 50, None, "5xx"),
         *logs.logs_sql(None, 51, None, (5, None))),
        ("all APIs ?status=503", lambda r: logs.logs_page(store, None, 50, None, "503"),
         *logs.logs_sql(None, 51, None, (5, 503))),
        ("all APIs ?status=404 (rare)", lambda r: logs.logs_page(store, None, 50, None,
                                                                 "404"),
         *logs.logs_sql(None, 51, None, (4, 404))),
        ("all APIs, old 1 h window", lambda r: logs.logs_page(store, None, 50, None, None,
                                                              *old),
         *window_sql(path, None, None, *old)),
        ("all APIs, old window ?status=5xx", lambda r: logs.logs_page(
            store, None, 50, None, "5xx", *old), *window_sql(path, None, (5, None), *old)),
        ("one API, old 1 h window", lambda r: logs.logs_page(store, api(r), 50, None, None,
                                                             *old),
         *window_sql(path, 1, None, *old)),
        ("one API, until 20 days ago", lambda r: logs.logs_page(store, api(r), 50, None,
                                                                None, None, old[0]),
         *window_sql(path, 1, None, None, old[0])),
        ("metrics range 24 h (60 s)", lambda r: logs.metrics_range(
            store, api(r), NOW - DAY, NOW, 60), *logs.metrics_sql(1, NOW - DAY, NOW, 60)),
        ("metrics range 7 d (900 s)", lambda r: logs.metrics_range(
            store, api(r), NOW - 7 * DAY, NOW, 900),
         *logs.metrics_sql(1, NOW - 7 * DAY, NOW, 900)),
    ]
    results = []
    flushes = None
    try:
        for name, fn, sql, args in queries:
            median, tail, cpu_tail = await timed(reps, fn)
            results.append((name, median, tail, cpu_tail, plan(path, sql, args)))
        if flush_s:
            flushes = await flushes_under_reads(reactor, store, n_apis, flush_s)
    finally:
        await store.stopService()
    return results, flushes


async def main(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="flm-dbgrowth-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for n_rows in args.rows:
            for n_apis in args.apis:
                path = work / f"db-{n_apis}-{n_rows}.sqlite3"
                if path.exists() and args.reuse:
                    how = "reused"
                else:
                    for f in work.glob(f"db-{n_apis}-{n_rows}.sqlite3*"):
                        f.unlink()
                    how = f"built in {build(path, n_apis, n_rows):.1f} s"
                size = path.stat().st_size / 1e6
                print(f"\n== {n_apis} APIs, {n_rows:,} log rows ({how}, {size:.0f} MB)")
                results, flushes = await measure(reactor, path, n_apis, n_rows, args.reps,
                                                 args.flush_s if n_rows >= 1_000_000 else 0)
                worst = 0.0
                for name, median, tail, cpu_tail, query_plan in results:
                    print(f"  {name:32s} median {median:6.2f} ms   p99 {tail:6.2f} ms   "
                          f"CPU p99 {cpu_tail:6.2f} ms")
                    if args.plans:
                        print(f"  {'':32s} plan: {query_plan}")
                    worst = max(worst, tail)
                target = "PASS" if worst <= 5.0 else "MISS"
                print(f"  worst p99 {worst:.2f} ms: {target} (target <= 5 ms)")
                if flushes is not None:
                    wait, flush_p99, longest, pages = flushes
                    verdict = "PASS" if wait <= 50.0 else "MISS"
                    print(f"  log flushes (500 rows / 100 ms) while a reader paged {pages} "
                          f"times: longest wait for the writer {wait:.2f} ms: {verdict} "
                          f"(target <= 50 ms); flush p99 {flush_p99:.2f} ms, longest "
                          f"{longest:.2f} ms")
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
    p.add_argument("--reuse", action="store_true", help="with --keep: reuse a database "
                   "already there (it holds the rows earlier flush runs added)")
    p.add_argument("--flush-s", type=float, default=30.0,
                   help="seconds of log flushes under a paging reader (at 1M rows)")
    args = p.parse_args()
    args.plans = True
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args)))


if __name__ == "__main__":
    run()
