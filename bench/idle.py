"""Idle CPU: FLM with 100 running APIs, doing nothing, over 60 s.

    python -m bench.idle [--apis 100] [--seconds 60] [--warmup 15]

Starts the fast bench backend and ``twistd -n flm``, creates ``--apis`` running APIs with
``POST /api/apis`` (each on its own loopback port), sends one request to each (so each
has served traffic and FLM's pool holds a backend connection), waits ``--warmup``
seconds, then reads FLM's CPU time (user + system, psutil) before and after ``--seconds``
of idleness.  Target: <= 1 % of one core.  Also prints the context switches (wake-ups)
per second, threads, RSS and open fds.  Everything started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psutil

from bench import harness, loadgen
from bench.harness import cpu_seconds
from bench.soak import wait_quiet

TARGET_PCT = 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FLM idle CPU with many running APIs")
    p.add_argument("--apis", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=15.0, help="seconds of rest before measuring")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    reason = loadgen.preflight(wrk=False)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    with harness.Run(args.keep_logs) as run:
        backend, backend_port = harness.start_backend(run.logdir)
        run.add(backend)
        flm = run.add(harness.FLM(run.logdir, harness.temp_dir("flm-bench-data-"), backend_port))
        flm.wait_healthy(timeout=60)
        t0 = time.perf_counter()
        ports = harness.free_ports(args.apis)
        apis = [flm.create_api(name=f"idle-{i}", model="bench-model", port=port) for i, port in enumerate(ports)]
        created = time.perf_counter() - t0
        body = json.dumps(loadgen.chat_body(False)).encode()
        for api in apis:
            flm.wait_port(api, timeout=30)
            client = loadgen.KeepAliveClient(api["port"], api["key"])
            try:
                client.post(body)
            finally:
                client.close()
        status, listed = flm.admin("GET", f"/api/apis?status=running&limit={min(500, args.apis)}")
        running = listed.get("total") if isinstance(listed, dict) else f"HTTP {status}"
        print(f"FLM pid {flm.pid}: {args.apis} APIs created in {created:.2f} s, running: {running}, "
              f"one request served by each")
        proc = psutil.Process(flm.pid)
        wait_quiet()
        print(f"resting {args.warmup:g} s, then measuring {args.seconds:g} s ...", flush=True)
        time.sleep(args.warmup)
        cpu0, ctx0, t_start = cpu_seconds(proc), sum(proc.num_ctx_switches()), time.monotonic()
        time.sleep(args.seconds)
        cpu1, ctx1, elapsed = cpu_seconds(proc), sum(proc.num_ctx_switches()), time.monotonic() - t_start
        pct = (cpu1 - cpu0) / elapsed * 100
        t = proc.cpu_times()
        print(f"\nidle CPU over {elapsed:.1f} s with {args.apis} running APIs: {cpu1 - cpu0:.3f} s = {pct:.3f} % "
              f"of one core [{'PASS' if pct <= TARGET_PCT else 'MISS'}] target <= {TARGET_PCT:g} %")
        print(f"  context switches {(ctx1 - ctx0) / elapsed:.1f}/s; threads {proc.num_threads()}; "
              f"RSS {proc.memory_info().rss / 2**20:.1f} MB; open fds {proc.num_fds()}; "
              f"process CPU since start: user {t.user:.2f} s, system {t.system:.2f} s")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
