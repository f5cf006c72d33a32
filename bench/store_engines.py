"""The per-request cost of the PostgreSQL store against SQLite, request logging on.

    python -m bench.store_engines [--reps 5] [--duration 5] [--concurrency 50]
                                  [--server postgresql://postgres@127.0.0.1:5432/postgres]

Starts the fast bench backend and two ``twistd -n flm`` side by side on it, both logging
every request (the default): one on SQLite in its data dir, one with ``--database`` on a
new PostgreSQL database ``flm_bench_<hex>`` (created here, dropped on the way out). Each
has one API. For each concurrency it runs both in turn (wrk, non-streaming), ``--reps``
times with the order alternated, and prints the medians of requests/s, p50, p99, FLM's
CPU seconds per 1,000 requests (and the part outside the reactor thread: the store's
threads) and, for PostgreSQL, the server's own CPU per 1,000 requests (its backends for
FLM's connections). Last it counts the log rows each store holds.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import psutil

from bench import harness, loadgen
from bench.harness import cpu_seconds, main_thread_cpu, median
from bench.soak import wait_quiet

VARIANTS = ("sqlite", "postgresql")


def _server_cpu(server: str, db: str) -> float:
    """CPU seconds of the PostgreSQL backends serving ``db`` (same machine)."""
    import psycopg
    with psycopg.connect(server, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,))]
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(args: argparse.Namespace, apis: dict[str, Any], procs: dict[str, Any],
            lua: dict[str, Any], db: str) -> list[dict[str, Any]]:
    for name in VARIANTS:  # warm-up: connections, pools, caches
        loadgen.run_wrk(apis[name]["port"], lua[name], 50, args.warmup)
    cells = []
    for conc in args.concurrency:
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in VARIANTS}
        for rep in range(args.reps):
            for name in (VARIANTS if rep % 2 == 0 else VARIANTS[::-1]):
                before, main_before = cpu_seconds(procs[name]), main_thread_cpu(procs[name])
                pg_before = _server_cpu(args.server, db) if name == "postgresql" else 0.0
                res = loadgen.run_wrk(apis[name]["port"], lua[name], conc, args.duration)
                # rows of the run written (the flush runs every second): then the server's CPU
                time.sleep(1.5)
                res["pg_s"] = (_server_cpu(args.server, db) - pg_before
                               if name == "postgresql" else 0.0)
                res["cpu_s"] = cpu_seconds(procs[name]) - before
                res["cpu_main_s"] = main_thread_cpu(procs[name]) - main_before
                runs[name].append(res)
                print(f"  c={conc:<3} {name:10} rep {rep + 1}: {res['rps']:7.0f} req/s  "
                      f"p50 {res['p50_us'] / 1e3:6.2f} ms  p99 {res['p99_us'] / 1e3:6.2f} ms  "
                      f"errors {res['errors'] + res['non2xx']}", flush=True)
        cell: dict[str, Any] = {"c": conc}
        for name, rs in runs.items():
            per_1k = [(r, 1000 / r["requests"]) for r in rs if r["requests"]]
            cell[name] = {
                "rps": median([r["rps"] for r in rs]),
                "p50_ms": median([r["p50_us"] / 1e3 for r in rs]),
                "p99_ms": median([r["p99_us"] / 1e3 for r in rs]),
                "cpu": median([r["cpu_s"] * k for r, k in per_1k]),
                "threads": median([(r["cpu_s"] - r["cpu_main_s"]) * k for r, k in per_1k]),
                "server": median([r["pg_s"] * k for r, k in per_1k]),
                "errors": sum(r["errors"] + r["non2xx"] for r in rs),
                "all_rps": [round(r["rps"]) for r in rs],
            }
        cell["pair_ratios"] = [b["rps"] / a["rps"] for a, b in zip(runs["sqlite"],
                                                                   runs["postgresql"])]
        cells.append(cell)
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FLM per-request cost: PostgreSQL store vs SQLite")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[50])
    p.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="a PostgreSQL server where a database may be created")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    reason = loadgen.preflight()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    with harness.postgresql_database(args.server) as (db, url):
        with harness.Run(args.keep_logs) as run:
            backend, backend_port = harness.start_backend(run.logdir)
            run.add(backend)
            common = ["--backend-max-concurrent", "64"]
            flms = {n: run.add(harness.FLM(run.logdir, harness.temp_dir("flm-bench-data-"),
                                           backend_port, common + extra, name=f"flm-{n}"))
                    for n, extra in (("sqlite", []), ("postgresql", ["--database", url]))}
            apis = {n: f.open_api(name="bench", model="bench-model", max_concurrent=64,
                                  max_queue=512, queue_timeout_s=60, upstream_timeout_s=60)
                    for n, f in flms.items()}
            procs = {n: psutil.Process(f.pid) for n, f in flms.items()}
            lua = {n: loadgen.write_lua(run.logdir / f"{n}.lua", loadgen.chat_body(False),
                                        apis[n]["key"]) for n in VARIANTS}
            wait_quiet()
            print(f"FLM on SQLite: pid {flms['sqlite'].pid}; on PostgreSQL ({db}): pid "
                  f"{flms['postgresql'].pid}; {args.reps} x {args.duration:g} s per cell, "
                  "order alternated; medians", flush=True)
            cells = measure(args, apis, procs, lua, db)
            rows = {}
            for n, f in flms.items():
                status, body = f.admin("GET", f"/api/apis/{apis[n]['id']}/logs?limit=1")
                rows[n] = (body.get("items") or [{}])[0].get("id") if status == 200 else status
            print()
            head = (f"{'c':>3} {'store':10} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
                    f"{'CPU s/1k':>8} {'threads':>7} {'PG s/1k':>7} {'err':>4}  runs")
            print(head)
            print("-" * len(head))
            for cell in cells:
                for n in VARIANTS:
                    r = cell[n]
                    print(f"{cell['c']:>3} {n:10} {r['rps']:7.0f} {r['p50_ms']:7.2f} "
                          f"{r['p99_ms']:7.2f} {r['cpu']:8.3f} {r['threads']:7.3f} "
                          f"{r['server']:7.3f} {r['errors']:4d}  {r['all_rps']}")
                pairs = ", ".join(f"{x:.2f}" for x in cell["pair_ratios"])
                print(f"    postgresql/sqlite req/s per pair: {pairs}; median "
                      f"{median(cell['pair_ratios']):.3f}")
            print("(CPU s/1k: FLM's CPU seconds per 1,000 requests; threads: the part outside "
                  "the reactor thread; PG s/1k: the PostgreSQL backends serving FLM)")
            print(f"newest log row id after the runs: {rows}")
            return 0
        return 1


if __name__ == "__main__":
    sys.exit(main())
