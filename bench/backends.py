"""Several backends (issue 12): what routing costs, and what a killed backend costs.

``python -m bench.backends [--quick]``:

- routing cost: wrk c=50 (non-streaming) against an API on one backend and an API on two,
  alternating, ``--reps`` times; the ratio of the medians of req/s (target >= 0.95);
- failover: c=20 keep-alive clients against an API on two backends for ``--before`` s, then
  one backend is killed (SIGKILL) and the load runs ``--after`` s more; the share of
  requests that failed after the kill (target 0) and the p99 latency in the 10 s after the
  kill against the p99 before it. Medians of ``--reps`` runs.

Backends are ``tests.fakes.fast`` processes (OpenAI-compatible, ~15k req/s), so FLM is
what is measured. Everything on 127.0.0.1; every process started is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench import harness, loadgen
from bench.harness import HOST, BenchError

BODY = json.dumps(loadgen.chat_body(False)).encode()


def start_fleet(run: harness.Run, n: int, shared: bool = False
                ) -> tuple[harness.FLM, list[tuple[Any, int]]]:
    """FLM with ``n`` backends. ``shared``: all are one backend process, reached under
    different names (127.0.0.1, localhost), so the figures show FLM's routing and not a
    second backend process competing for the 2 cores."""
    backends = []
    for _ in range(1 if shared else n):
        child, port = harness.start_backend(run.logdir)
        run.add(child)
        backends.append((child, port))
    hosts = [HOST] * n
    if shared:
        backends *= n
        hosts = [HOST, "localhost"][:n]
    flm = run.add(harness.FLM(run.logdir, harness.temp_dir("flm-bench-data-"), backends[0][1],
                              extra=["--backend-max-concurrent", "64", "--config",
                                     str(_config(run.logdir))]))
    flm.wait_healthy(60)
    for i, (_, port) in enumerate(backends[1:], 1):
        status, body = flm.admin("POST", "/api/backends", {
            "name": f"b{i}", "url": f"http://{hosts[i]}:{port}", "kind": "openai",
            "max_concurrent": 64})
        if status != 201:
            raise BenchError(f"POST /api/backends: {status} {body}")
    deadline = time.monotonic() + 20
    while True:
        status, body = flm.admin("GET", "/api/backends")
        if all(b["state"] == "up" and b["models"] for b in body["items"]):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"backends not up: {body}")
        time.sleep(0.1)
    return flm, backends


def start_fleet_of(run: harness.Run, backend_argvs: list[list[str]]
                   ) -> tuple[harness.FLM, list[int]]:
    """FLM whose backends are these processes (each prints ``listening on PORT``)."""
    ports = []
    for i, argv in enumerate(backend_argvs):
        child = run.add(harness.Child(f"backend{i}", argv, run.logdir))
        ports.append(int(child.wait_line("listening on")))
    flm = run.add(harness.FLM(run.logdir, harness.temp_dir("flm-bench-data-"), ports[0],
                              extra=["--backend-max-concurrent", "4096", "--config",
                                     str(_config(run.logdir))]))
    flm.wait_healthy(60)
    for i, port in enumerate(ports[1:], 1):
        status, body = flm.admin("POST", "/api/backends", {
            "name": f"b{i}", "url": f"http://{HOST}:{port}", "kind": "openai",
            "max_concurrent": 4096})
        if status != 201:
            raise BenchError(f"POST /api/backends: {status} {body}")
    return flm, ports


def _config(logdir: Path) -> Path:
    path = logdir / "flm.toml"
    path.write_text("backend_probe_interval_s = 1.0\nmodel_cache_ttl_s = 2.0\n")
    return path


def routing_cost(args: argparse.Namespace, shared: bool) -> dict[str, Any]:
    with harness.Run(args.keep_logs) as run:
        flm, _ = start_fleet(run, 2, shared)
        common = dict(model="bench-model", max_concurrent=64, max_queue=512)
        one = flm.open_api(name="one", backends=["default"], **common)
        two = flm.open_api(name="two", **common)
        lua = {n: loadgen.write_lua(run.logdir / f"{n}.lua", loadgen.chat_body(False), a["key"])
               for n, a in (("one", one), ("two", two))}
        ports = {"one": one["port"], "two": two["port"]}
        for name in ports:  # warm-up
            loadgen.run_wrk(ports[name], lua[name], 50, 1)
        rps: dict[str, list[float]] = {"one": [], "two": []}
        # FLM's own CPU per request: what routing costs FLM, apart from what a second
        # backend process costs the shared 2 cores.
        cpu: dict[str, list[float]] = {"one": [], "two": []}
        proc = psutil.Process(flm.pid)
        for rep in range(args.reps):
            for name in (("one", "two") if rep % 2 == 0 else ("two", "one")):
                before = harness.cpu_seconds(proc)
                res = loadgen.run_wrk(ports[name], lua[name], 50, args.duration)
                if res["errors"] or res["non2xx"]:
                    raise BenchError(f"{name}: {res['errors']} errors, {res['non2xx']} non-2xx")
                rps[name].append(res["rps"])
                cpu[name].append((harness.cpu_seconds(proc) - before) / res["requests"] * 1e6)
                print(f"  {name}: {res['rps']:.0f} req/s, FLM {cpu[name][-1]:.0f} us CPU a "
                      f"request", flush=True)
        status, body = flm.admin("GET", "/api/backends")
        spread = {b["name"]: b["requests"] for b in body["items"]}
        return {"rps_one": harness.median(rps["one"]), "rps_two": harness.median(rps["two"]),
                "ratio": harness.median(rps["two"]) / harness.median(rps["one"]),
                "cpu_us_one": harness.median(cpu["one"]), "cpu_us_two": harness.median(cpu["two"]),
                "cpu_ratio": harness.median(cpu["two"]) / harness.median(cpu["one"]),
                "requests_per_backend": spread, "runs": rps, "cpu_runs": cpu}
    raise SystemExit(1)


def _client(port: int, key: str, stop: threading.Event, out: list[tuple[float, float, int]]
            ) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/chat/completions", body=BODY, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
        out.append((t0, (time.perf_counter() - t0) * 1e3, status))
    conn.close()


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))] if values else float("nan")


def failover_once(args: argparse.Namespace) -> dict[str, Any]:
    with harness.Run(args.keep_logs) as run:
        flm, backends = start_fleet(run, 2)
        api = flm.open_api(name="pair", model="bench-model", max_concurrent=64, max_queue=512)
        stop = threading.Event()
        outs: list[list[tuple[float, float, int]]] = [[] for _ in range(args.clients)]
        threads = [threading.Thread(target=_client, args=(api["port"], api["key"], stop, o),
                                    daemon=True) for o in outs]
        for t in threads:
            t.start()
        time.sleep(args.before)
        killed_at = time.perf_counter()
        backends[1][0].proc.kill()
        time.sleep(args.after)
        stop.set()
        for t in threads:
            t.join(30)
        rows = [r for o in outs for r in o]
        before = [ms for t0, ms, st in rows if killed_at - 5 <= t0 < killed_at and st == 200]
        after = [r for r in rows if killed_at <= r[0] < killed_at + 10]
        failed = [r for r in after if r[2] != 200]
        status, body = flm.admin("GET", "/api/backends")
        return {"requests_after_kill": len(after), "failed_after_kill": len(failed),
                "failed_share": len(failed) / max(1, len(after)),
                "p99_before_ms": _p99(before),
                "p99_after_ms": _p99([ms for t0, ms, st in after]),
                "states": {b["name"]: b["state"] for b in body["items"]},
                "retries": {b["name"]: b["retries"] for b in body["items"]}}
    raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repetition, 2 s wrk runs")
    p.add_argument("--reps", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--before", type=float, default=5.0)
    p.add_argument("--after", type=float, default=10.0)
    p.add_argument("--only", choices=("routing", "failover"))
    p.add_argument("--out")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    reason = loadgen.preflight()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    if args.only in (None, "routing"):
        for shared in (True, False):
            what = "one backend process" if shared else "two backend processes"
            print(f"routing cost: one backend vs two ({what}), wrk c=50", flush=True)
            r = results["routing_shared" if shared else "routing"] = routing_cost(args, shared)
            print(f"routing ({what}): {r['rps_one']:.0f} vs {r['rps_two']:.0f} req/s, ratio "
                  f"{r['ratio']:.3f} (target >= 0.95); FLM CPU a request {r['cpu_us_one']:.0f}"
                  f" vs {r['cpu_us_two']:.0f} us, one/two {1 / r['cpu_ratio']:.3f}; spread "
                  f"{r['requests_per_backend']}", flush=True)
    if args.only in (None, "failover"):
        runs = []
        for rep in range(args.reps):
            print(f"failover run {rep + 1}/{args.reps}: c={args.clients}, kill after "
                  f"{args.before:g} s", flush=True)
            runs.append(failover_once(args))
            print(f"  {runs[-1]}", flush=True)
        results["failover"] = {
            "failed_share": harness.median([r["failed_share"] for r in runs]),
            "p99_before_ms": harness.median([r["p99_before_ms"] for r in runs]),
            "p99_after_ms": harness.median([r["p99_after_ms"] for r in runs]),
            "runs": runs}
        f = results["failover"]
        print(f"failover: failed share {f['failed_share']:.4f} (target 0); p99 "
              f"{f['p99_before_ms']:.1f} ms before, {f['p99_after_ms']:.1f} ms in the 10 s after")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
