"""Proxy throughput and latency: backend direct vs a bare Twisted proxy vs FLM, same run.

    python -m bench.proxy [--quick] [--out results.json] [--py-spy flm-stacks.txt]

Starts the fast fake backend (bench.backend), the bare proxy (bench.bare_proxy) and
``twistd -n flm`` with one API, then for concurrency 1, 10, 50, non-streaming and
streaming, runs wrk against each target in turn (rotating the order each repetition)
and prints medians: requests/s, p50/p99 latency, the ratios FLM/bare and FLM/direct,
FLM's CPU seconds per 1,000 requests and its RSS.  Then streaming time-to-first-byte at
concurrency 1 with a keep-alive Python client.  Every process is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import harness, loadgen
from bench.harness import BenchError, cpu_seconds, main_thread_cpu, median
from bench.report import fmt_table, verdict
from bench.soak import wait_quiet

TARGETS = ("direct", "bare", "flm")
MODES = ("nonstream", "stream", "stream-usage")


def body_of(mode: str) -> dict[str, Any]:
    """``stream``: the client does not ask for usage, so FLM asks the backend for it (one
    more event, which the bare proxy is not sent) and hides it from the client."""
    body = loadgen.chat_body(mode != "nonstream")
    if mode == "stream-usage":
        body["stream_options"] = {"include_usage": True}
    return body


def start_flm(logdir: Path, backend_port: int, args: argparse.Namespace) -> harness.FLM:
    extra = ["--backend-max-concurrent", str(args.backend_max_concurrent)]
    if args.config:
        extra += ["--config", str(Path(args.config).resolve())]
    extra += args.flm_arg
    return harness.FLM(logdir, harness.temp_dir("flm-bench-data-"), backend_port, extra)


def probe(port: int, key: str | None, stream: bool) -> dict[str, Any]:
    """One request, to check the target answers 200 and to keep its headers."""
    import http.client

    conn = http.client.HTTPConnection(harness.HOST, port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn.request("POST", "/v1/chat/completions", json.dumps(loadgen.chat_body(stream)), headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise BenchError(f"probe on port {port} (stream={stream}): {resp.status} {body[:300]!r}")
        return {"status": resp.status, "headers": dict(resp.getheaders()), "bytes": len(body),
                "usage_chunk_seen": b'"usage"' in body if stream else None}
    finally:
        conn.close()


def measure(args: argparse.Namespace, targets: tuple[str, ...], ports: dict[str, int],
            pids: dict[str, int], lua: dict[tuple[str, bool], Path]) -> dict[str, Any]:
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    results: dict[str, Any] = {}
    for mode in args.modes:
        results[mode] = {}
        for name in targets:  # warm-up: connections, pools, caches
            loadgen.run_wrk(ports[name], lua[(name, mode)], 50, args.warmup)
        for conc in args.concurrency:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for rep in range(args.reps):
                k = rep % len(targets)
                order = targets[k:] + targets[:k]
                for name in order:
                    before = {n: cpu_seconds(p) for n, p in procs.items()}
                    main_before = {n: main_thread_cpu(p) for n, p in procs.items()}
                    res = loadgen.run_wrk(ports[name], lua[(name, mode)], conc, args.duration)
                    after = {n: cpu_seconds(p) for n, p in procs.items()}
                    main_after = {n: main_thread_cpu(p) for n, p in procs.items()}
                    for n in procs:
                        res[f"cpu_{n}_s"] = after[n] - before[n]
                        res[f"cpu_{n}_main_s"] = main_after[n] - main_before[n]
                    res["rss_flm_mb"] = procs["flm"].memory_info().rss / 2**20 if "flm" in procs else float("nan")
                    runs[name].append(res)
                    print(f"  {mode:9} c={conc:<3} {name:6} rep {rep + 1}: {res['rps']:8.0f} req/s  "
                          f"p50 {res['p50_us'] / 1e3:6.2f} ms  p99 {res['p99_us'] / 1e3:6.2f} ms  "
                          f"errors {res['errors']} non-2xx {res['non2xx']}", flush=True)
            results[mode][str(conc)] = summarise(runs)
    return results


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        own = "flm" if name == "flm" else ("bare" if name == "bare" else "backend")
        out[name] = {
            "rps": median([r["rps"] for r in rs]),
            "p50_ms": median([r["p50_us"] / 1e3 for r in rs]),
            "p99_ms": median([r["p99_us"] / 1e3 for r in rs]),
            "requests": sum(r["requests"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "non2xx": sum(r["non2xx"] for r in rs),
            # CPU of the process that serves this target, per 1,000 requests
            "cpu_s_per_1k": median([r[f"cpu_{own}_s"] / r["requests"] * 1000 for r in rs if r["requests"]]),
            # of which the main (reactor) thread; the rest is worker threads (FLM: SQLite log writes)
            "main_cpu_s_per_1k": median([r[f"cpu_{own}_main_s"] / r["requests"] * 1000
                                         for r in rs if r["requests"]]),
            "rss_flm_mb": max(r["rss_flm_mb"] for r in rs),
            "runs": rs,
        }
    d, b = out["direct"], out["bare"]
    f = out.get("flm") or {"rps": float("nan"), "p50_ms": float("nan")}
    out["ratios"] = {
        "flm_over_bare_rps": f["rps"] / b["rps"] if b["rps"] else None,
        "flm_over_direct_rps": f["rps"] / d["rps"] if d["rps"] else None,
        "bare_over_direct_rps": b["rps"] / d["rps"] if d["rps"] else None,
        "flm_added_p50_ms": f["p50_ms"] - d["p50_ms"],
        "bare_added_p50_ms": b["p50_ms"] - d["p50_ms"],
        "flm_minus_bare_p50_ms": f["p50_ms"] - b["p50_ms"],
    }
    return out


def measure_ttfb(args: argparse.Namespace, targets: tuple[str, ...], ports: dict[str, int],
                 keys: dict[str, str | None]) -> dict[str, Any]:
    body = dict(loadgen.chat_body(True), bench_chunk_delay_ms=args.chunk_delay_ms)
    samples = loadgen.interleaved({n: (ports[n], keys[n]) for n in targets},
                                  json.dumps(body).encode(), args.ttfb_n)
    out: dict[str, Any] = {"n": args.ttfb_n, "chunk_delay_ms": args.chunk_delay_ms}
    for name, ss in samples.items():
        out[name] = {k: median([s[k] for s in ss]) for k in ("head_ms", "ttfb_ms", "total_ms")}
        out[name]["all_done"] = all(s["done"] for s in ss)
    for name in targets[1:]:
        out[f"{name}_added_ttfb_ms"] = out[name]["ttfb_ms"] - out["direct"]["ttfb_ms"]
    return out


def py_spy(pid: int, port: int, script: Path, seconds: float, out: Path) -> str:
    """Sample FLM with py-spy during one c=50 non-streaming wrk run; write collapsed stacks."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        return "py-spy not installed (pip install py-spy)"
    spy = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--duration", str(int(seconds) + 1),
                            "--rate", "100", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        loadgen.run_wrk(port, script, 50, seconds)
        spy.wait(seconds + 30)
    finally:
        if spy.poll() is None:
            spy.terminate()
            spy.wait(10)
    return f"collapsed stacks in {out}"


def issue10_checks(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 10: FLM >= 0.95 x the bare proxy's req/s at c=50, streaming and not (the bare
    proxy sending its body as FLM does)."""
    checks: list[tuple[str, str, bool | None]] = []
    for mode in MODES:
        row = results.get(mode, {}).get("50", {})
        if "flm" in row and "bare" in row:
            v = row["ratios"]["flm_over_bare_rps"]
            checks.append((f"FLM/bare req/s at c=50 {mode} >= 0.95", f"{v:.3f}", v >= 0.95))
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FLM proxy benchmark (direct vs bare proxy vs FLM)")
    p.add_argument("--quick", action="store_true", help="2 s runs, 1 repetition, 100 TTFB requests")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 5, quick 2)")
    p.add_argument("--reps", type=int, help="repetitions per cell; medians are printed (default 3, quick 1)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of c=50 warm-up per target and mode")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--modes", nargs="+", choices=MODES, default=["nonstream", "stream"],
                   help="stream-usage: streams whose client asks for usage itself, so the "
                        "backend sends the bare proxy the same usage event it sends FLM")
    p.add_argument("--ttfb-n", type=int, help="streaming requests per target for TTFB (default 300, quick 100)")
    p.add_argument("--chunk-delay-ms", type=float, default=2.0, help="gap between SSE events in the TTFB run")
    p.add_argument("--backend-max-concurrent", type=int, default=64)
    p.add_argument("--config", help="TOML config passed to FLM with --config")
    p.add_argument("--flm-arg", action="append", default=[], help="extra argument for the flm plugin")
    p.add_argument("--without-flm", action="store_true", help="only backend direct vs bare proxy")
    p.add_argument("--out", help="write the JSON results here")
    p.add_argument("--py-spy", metavar="FILE", help="also sample FLM with py-spy at c=50 into FILE")
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs (path printed)")
    args = p.parse_args(argv)
    for name, full, quick in (("duration", 5.0, 2.0), ("reps", 3, 1), ("ttfb_n", 300, 100)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    targets = TARGETS[:2] if args.without_flm else TARGETS
    reason = loadgen.preflight(flm=not args.without_flm)
    if reason:
        print(reason, file=sys.stderr)
        return 2

    wait_quiet()  # the machine is shared: no figures while another benchmark runs
    flm = None
    with harness.Run(args.keep_logs) as run:
        logdir = run.logdir
        backend, backend_port = harness.start_backend(logdir)
        run.add(backend)
        bare, bare_port = harness.start_bare_proxy(logdir, backend_port)
        run.add(bare)
        ports = {"direct": backend_port, "bare": bare_port}
        keys: dict[str, str | None] = {"direct": None, "bare": None}
        pids = {"backend": backend.pid, "bare": bare.pid}
        if not args.without_flm:
            flm = run.add(start_flm(logdir, backend_port, args))
            api = flm.open_api(name="bench", model="bench-model", max_concurrent=64, max_queue=512,
                               queue_timeout_s=60, upstream_timeout_s=60)
            ports["flm"], keys["flm"], pids["flm"] = api["port"], api["key"], flm.pid
        lua = {(n, m): loadgen.write_lua(logdir / f"{n}-{m}.lua", body_of(m), keys[n])
               for n in targets for m in MODES}
        probes = {f"{n}-{'stream' if s else 'nonstream'}": probe(ports[n], keys[n], s)
                  for n in targets for s in (False, True)}
        if flm is not None:
            shown = {k: v for k, v in probes["flm-nonstream"]["headers"].items()
                     if k.lower() in ("server-timing", "x-request-id")}
            print(f"FLM pid {flm.pid}, API port {ports['flm']}; FLM response headers: {shown}")
        print(f"{args.reps} x {args.duration:g} s per cell, wrk -t1; medians", flush=True)
        results = measure(args, targets, ports, pids, lua)
        ttfb: dict[str, Any] = {}
        if "stream" in args.modes:
            print("measuring streaming TTFB ...", flush=True)
            ttfb = measure_ttfb(args, targets, ports, keys)
        log_ok, spy_note = None, None
        if flm is not None:
            status, logs = flm.admin("GET", f"/api/apis/{api['id']}/logs?limit=1")
            log_ok = status == 200 and isinstance(logs, dict) and bool(logs.get("items"))
            if args.py_spy:
                spy_note = py_spy(flm.pid, ports["flm"], lua[("flm", "nonstream")], 10, Path(args.py_spy))

        print()
        print(fmt_table(results, ttfb, targets))
        if flm is not None:
            print(f"\nFLM logging: log rows present after the runs: {log_ok} (GET /api/apis/{{id}}/logs -> {status})")
        checks = verdict(results, ttfb) + issue10_checks(results)
        if checks:
            print("\nTargets (issues 3 and 10):")
        for what, value, ok in checks:
            print(f"  [{'PASS' if ok else 'MISS'}] {what}: {value}")
        if spy_note:
            print(f"\npy-spy: {spy_note}")
        if args.out:
            Path(args.out).write_text(json.dumps({
                "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "settings": vars(args), "flm_argv": flm.argv if flm else None,
                "probes": probes, "results": results, "ttfb": ttfb, "log_rows_present": log_ok,
                "checks": [{"what": w, "value": v, "pass": ok} for w, v, ok in checks],
            }, indent=2, default=str))
            print(f"\nJSON written to {args.out}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
