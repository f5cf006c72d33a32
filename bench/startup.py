"""Startup time with 100 stored APIs, and the latency FLM adds at concurrency 1.

    python -m bench.startup [--apis 100] [--running 10] [--runs 5] [--requests 1000] [--out FILE]

1. Starts the fast fake backend and ``twistd -n flm`` on a fresh data dir, creates
   ``--apis`` APIs through the admin API (``--running`` of them running, the rest
   stopped, each on its own loopback port), and stops FLM with SIGTERM.
2. ``--runs`` times: starts FLM on that data dir and measures the time from spawning the
   process until ``GET /health`` answers 200 and until every running API's port accepts
   connections; then SIGTERM (the stop time is measured too).  The same on an empty data
   dir gives the baseline (interpreter, imports, reactor, admin port).
3. Starts FLM once more and sends ``--requests`` non-streaming requests at concurrency 1
   to one API and as many to the backend directly (one keep-alive connection each,
   alternating in blocks of 100); prints the medians and the difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness, loadgen
from bench.harness import BenchError, median
from bench.soak import wait_quiet


def seed(logdir: Path, data_dir: Path, backend_port: int, n_apis: int, n_running: int) -> dict[str, Any]:
    """Create the APIs once; return the running APIs' ports and one key."""
    flm = harness.FLM(logdir, data_dir, backend_port, name="flm-seed")
    try:
        flm.wait_healthy(timeout=60)
        ports = harness.free_ports(n_apis)
        running: dict[str, int] = {}
        key, key_port = None, None
        t0 = time.perf_counter()
        for i in range(n_apis):
            start = i < n_running
            api = flm.create_api(name=f"bench-{i:03d}", model="bench-model", port=ports[i], start=start,
                                 max_concurrent=4, max_queue=64)
            if start:
                running[api["id"]] = api["port"]
                if key is None:
                    key, key_port = api["key"], api["port"]
        create_s = time.perf_counter() - t0
        status, listing = flm.admin("GET", "/api/apis?status=running&limit=500")
        if status != 200 or listing.get("total") != n_running:
            raise BenchError(f"expected {n_running} running APIs, GET /api/apis?status=running -> {status} {listing}")
        return {"running_ports": sorted(running.values()), "key": key, "key_port": key_port,
                "create_s": create_s}
    finally:
        stop_s = flm.stop()
        print(f"  seeded {n_apis} APIs ({n_running} running); stop took {stop_s:.2f} s", flush=True)


def one_start(logdir: Path, data_dir: Path, backend_port: int, ports: list[int], label: str) -> dict[str, float]:
    flm = harness.FLM(logdir, data_dir, backend_port, name=label)
    try:
        health_s = flm.wait_healthy(timeout=60)
        deadline = time.monotonic() + 60
        waiting = list(ports)
        while waiting:
            waiting = [p for p in waiting if not harness.port_accepts(p)]
            if waiting and time.monotonic() > deadline:
                raise BenchError(f"{label}: ports {waiting} never accepted:\n{flm.child.tail()}")
            if waiting:
                time.sleep(0.005)
        ready_s = time.perf_counter() - flm.child.started
    finally:
        stop_s = flm.stop()
    # twistd re-raises the signal after a clean shutdown, so the exit status is -15 either way;
    # its last log line tells a clean stop from a killed process.
    return {"health_s": health_s, "ready_s": ready_s, "stop_s": stop_s,
            "exit_code": flm.child.returncode, "clean_stop": "Server Shut Down." in flm.child.output()}


def latency(logdir: Path, data_dir: Path, backend_port: int, api_port: int, key: str, n: int) -> dict[str, Any]:
    flm = harness.FLM(logdir, data_dir, backend_port, name="flm-latency")
    try:
        flm.wait_healthy(timeout=60)
        deadline = time.monotonic() + 30
        while not harness.port_accepts(api_port):
            if time.monotonic() > deadline:
                raise BenchError(f"API port {api_port} not accepting:\n{flm.child.tail()}")
            time.sleep(0.01)
        body = json.dumps(loadgen.chat_body(False)).encode()
        samples = loadgen.interleaved({"direct": (backend_port, None), "flm": (api_port, key)}, body, n,
                                      block=100)
    finally:
        flm.stop()
    out: dict[str, Any] = {"n": n}
    for name, ss in samples.items():
        ms = sorted(s["total_ms"] for s in ss)
        out[name] = {"p50_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * len(ms))],
                     "p99_ms": ms[int(0.99 * len(ms))], "mean_ms": statistics.fmean(ms)}
    out["added_p50_ms"] = out["flm"]["p50_ms"] - out["direct"]["p50_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FLM startup time and added latency at concurrency 1")
    p.add_argument("--apis", type=int, default=100)
    p.add_argument("--running", type=int, default=10, help="how many of the stored APIs are running")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--no-baseline", action="store_true", help="skip the empty-data-dir baseline")
    p.add_argument("--out", help="write the JSON results here")
    args = p.parse_args(argv)
    reason = loadgen.preflight(wrk=False)
    if reason:
        print(reason, file=sys.stderr)
        return 2

    wait_quiet()  # the machine is shared: no figures while another benchmark runs
    with harness.Run() as run:
        logdir = run.logdir
        data_dir = run.remove_later(harness.temp_dir("flm-bench-data-"))
        empty_dir = run.remove_later(harness.temp_dir("flm-bench-empty-"))
        backend, backend_port = harness.start_backend(logdir)
        run.add(backend)
        seeded = seed(logdir, data_dir, backend_port, args.apis, args.running)
        ports = seeded["running_ports"]
        runs = []
        for i in range(args.runs):
            r = one_start(logdir, data_dir, backend_port, ports, f"flm-start-{i + 1}")
            runs.append(r)
            print(f"  start {i + 1}: /health 200 after {r['health_s']:.3f} s, "
                  f"{len(ports)} API ports accepting after {r['ready_s']:.3f} s; "
                  f"SIGTERM -> {'clean stop' if r['clean_stop'] else 'NOT a clean stop'} "
                  f"in {r['stop_s']:.3f} s", flush=True)
        base = []
        if not args.no_baseline:
            for i in range(args.runs):
                base.append(one_start(logdir, empty_dir, backend_port, [], f"flm-empty-{i + 1}"))
        print(f"  latency: {args.requests} requests each, FLM vs backend direct ...", flush=True)
        lat = latency(logdir, data_dir, backend_port, seeded["key_port"], seeded["key"], args.requests)

        med = {k: median([r[k] for r in runs]) for k in ("health_s", "ready_s", "stop_s")}
        print()
        print(f"Startup of twistd -n flm with {args.apis} stored APIs ({args.running} running), "
              f"median of {args.runs}:")
        each = {k: ", ".join("%.3f" % r[k] for r in runs) for k in ("health_s", "ready_s")}
        print(f"  until GET /health = 200:             {med['health_s']:.3f} s   (runs: {each['health_s']})")
        print(f"  until all {len(ports)} running ports accept:  {med['ready_s']:.3f} s   (runs: {each['ready_s']})")
        print(f"  SIGTERM to exit:                     {med['stop_s']:.3f} s")
        if base:
            bmed = {k: median([r[k] for r in base]) for k in ("health_s", "stop_s")}
            print(f"  baseline, empty data dir, /health = 200: {bmed['health_s']:.3f} s  "
                  f"(so the {args.apis} APIs cost {med['ready_s'] - bmed['health_s']:+.3f} s)")
        print(f"  creating the {args.apis} APIs through the admin API took {seeded['create_s']:.2f} s")
        print()
        print(f"Non-streaming latency at concurrency 1, {lat['n']} requests each, keep-alive, same run:")
        for name in ("direct", "flm"):
            r = lat[name]
            print(f"  {name:6}  p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                  f"mean {r['mean_ms']:.3f} ms")
        print(f"  added by FLM (median): {lat['added_p50_ms']:+.3f} ms   "
              f"[target <= 1.5 ms: {'PASS' if lat['added_p50_ms'] <= 1.5 else 'MISS'}]")
        if args.out:
            Path(args.out).write_text(json.dumps({
                "apis": args.apis, "running": args.running, "runs": runs, "median": med,
                "baseline_runs": base, "create_s": seeded["create_s"], "latency": lat}, indent=2))
            print(f"\nJSON written to {args.out}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
