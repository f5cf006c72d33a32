"""Logging cost: proxy throughput with request logging on vs off, same run.

    python -m bench.logging_cost [--reps 5] [--duration 5] [--concurrency 50 1] [--stream]

Starts the fast bench backend and two ``twistd -n flm`` side by side on it: one as by
default (a log row per request, written in batches), one with a TOML config holding
``request_log = false`` passed with ``--config``.  Each has one API.  For each
concurrency (wrk, non-streaming; ``--stream`` adds streaming cells) it runs both in turn,
``--reps`` times with the order alternated, and prints the medians of requests/s, p50 and
p99, FLM's CPU seconds per 1,000 requests and the ratio on/off (target >= 0.95).  Last it
checks that the logging instance wrote rows and the other none.  Both are stopped on the way out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import psutil

from bench import harness, loadgen
from bench.harness import cpu_seconds, main_thread_cpu, median
from bench.proxy import py_spy
from bench.soak import start_flm, wait_quiet

VARIANTS = ("on", "off")
TARGET = 0.95


def measure(args: argparse.Namespace, apis: dict[str, dict[str, Any]], procs: dict[str, psutil.Process],
            lua: dict[tuple[str, bool], Path]) -> list[dict[str, Any]]:
    cells = []
    for stream in ((False, True) if args.stream else (False,)):
        for name in VARIANTS:  # warm-up: connections, pools, caches
            loadgen.run_wrk(apis[name]["port"], lua[(name, stream)], 50, args.warmup)
        for conc in args.concurrency:
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in VARIANTS}
            for rep in range(args.reps):
                order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
                for name in order:
                    before, main_before = cpu_seconds(procs[name]), main_thread_cpu(procs[name])
                    res = loadgen.run_wrk(apis[name]["port"], lua[(name, stream)], conc, args.duration)
                    res["cpu_s"] = cpu_seconds(procs[name]) - before
                    res["cpu_main_s"] = main_thread_cpu(procs[name]) - main_before
                    runs[name].append(res)
                    print(f"  {'stream' if stream else 'nonstream':9} c={conc:<3} logging {name:3} rep {rep + 1}: "
                          f"{res['rps']:7.0f} req/s  p50 {res['p50_us'] / 1e3:6.2f} ms  "
                          f"p99 {res['p99_us'] / 1e3:6.2f} ms  errors {res['errors']} non-2xx {res['non2xx']}",
                          flush=True)
            cell: dict[str, Any] = {"stream": stream, "c": conc}
            for name, rs in runs.items():
                cell[name] = {
                    "rps": median([r["rps"] for r in rs]),
                    "p50_ms": median([r["p50_us"] / 1e3 for r in rs]),
                    "p99_ms": median([r["p99_us"] / 1e3 for r in rs]),
                    "cpu_s_per_1k": median([r["cpu_s"] / r["requests"] * 1000 for r in rs if r["requests"]]),
                    "threads_s_per_1k": median([(r["cpu_s"] - r["cpu_main_s"]) / r["requests"] * 1000
                                                for r in rs if r["requests"]]),
                    "errors": sum(r["errors"] + r["non2xx"] for r in rs),
                    "all_rps": [round(r["rps"]) for r in rs],
                }
            # per-rep ratios too: each pair ran back to back, so they share the machine's mood
            cell["ratio"] = cell["on"]["rps"] / cell["off"]["rps"]
            cell["pair_ratios"] = [a["rps"] / b["rps"] for a, b in zip(runs["on"], runs["off"])]
            cells.append(cell)
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FLM throughput with request logging on vs off")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[50, 1])
    p.add_argument("--stream", action="store_true", help="also streaming cells")
    p.add_argument("--py-spy", metavar="PREFIX", help="then sample each FLM with py-spy during a 10 s "
                   "c=50 run into PREFIX-on.txt and PREFIX-off.txt (read them with python -m bench.stacks)")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    reason = loadgen.preflight()
    if reason:
        print(reason, file=sys.stderr)
        return 2

    with harness.Run(args.keep_logs) as run:
        logdir = run.logdir
        backend, backend_port = harness.start_backend(logdir)
        run.add(backend)
        config = logdir / "no-request-log.toml"
        config.write_text("request_log = false\n")
        common = ["--backend-max-concurrent", "64"]
        flms = {"on": run.add(start_flm(logdir, backend_port, common)),
                "off": run.add(harness.FLM(logdir, harness.temp_dir("flm-bench-data-"), backend_port,
                                           common + ["--config", str(config)], name="flm-nolog"))}
        apis = {n: f.open_api(name="bench", model="bench-model", max_concurrent=64, max_queue=512,
                            queue_timeout_s=60, upstream_timeout_s=60) for n, f in flms.items()}
        procs = {n: psutil.Process(f.pid) for n, f in flms.items()}
        lua = {(n, s): loadgen.write_lua(logdir / f"{n}-{s}.lua", loadgen.chat_body(s), apis[n]["key"])
               for n in VARIANTS for s in (False, True)}
        print(f"FLM logging on: pid {flms['on'].pid}; logging off (request_log = false via --config): "
              f"pid {flms['off'].pid}")
        wait_quiet()
        print(f"{args.reps} x {args.duration:g} s per cell, wrk -t1, order alternated; medians", flush=True)
        cells = measure(args, apis, procs, lua)
        rows = {}
        for n, f in flms.items():
            status, body = f.admin("GET", f"/api/apis/{apis[n]['id']}/logs?limit=1")
            rows[n] = len(body.get("items", [])) if status == 200 and isinstance(body, dict) else f"HTTP {status}"

        print()
        head = f"{'mode':9} {'c':>3} {'logging':7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU s/1k':>8} {'threads':>7} {'err':>4}  runs"
        print(head)
        print("-" * len(head))
        for cell in cells:
            mode = "stream" if cell["stream"] else "nonstream"
            for n in VARIANTS:
                r = cell[n]
                print(f"{mode:9} {cell['c']:>3} {n:7} {r['rps']:7.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                      f"{r['cpu_s_per_1k']:8.3f} {r['threads_s_per_1k']:7.3f} {r['errors']:4d}  {r['all_rps']}")
            pairs = ", ".join(f"{x:.2f}" for x in cell["pair_ratios"])
            print(f"{'':9} {'':>3} on/off req/s {cell['ratio']:.3f} (per pair: {pairs}; median "
                  f"{median(cell['pair_ratios']):.3f})")
        print("(CPU s/1k: FLM's CPU seconds per 1,000 requests; threads: the part outside the reactor "
              "thread, i.e. the database writer)")
        print(f"\nlog rows present after the runs: logging on {rows['on']}, logging off {rows['off']} "
              f"(GET /api/apis/{{id}}/logs?limit=1)")
        print("\nTarget (issue 4): throughput with logging on >= 95 % of logging off")
        for cell in cells:
            mode = "streaming" if cell["stream"] else "non-streaming"
            print(f"  [{'PASS' if cell['ratio'] >= TARGET else 'MISS'}] {mode} c={cell['c']}: "
                  f"on/off = {cell['ratio']:.3f}")
        if args.py_spy:
            for n in VARIANTS:
                out = Path(f"{args.py_spy}-{n}.txt").resolve()
                print(f"py-spy, logging {n}: {py_spy(flms[n].pid, apis[n]['port'], lua[(n, False)], 10, out)}",
                      flush=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
