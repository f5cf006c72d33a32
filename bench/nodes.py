"""Several nodes on one PostgreSQL database: how fast a change on one is in effect on the
other, and what a second node on the same machine (``reuse_port``) does to throughput.

    python -m bench.nodes [--changes 100] [--reps 3] [--duration 5] [--concurrency 50]
                          [--server postgresql://postgres@127.0.0.1:5432/postgres]

Creates a database ``flm_bench_<hex>`` (dropped on the way out), starts the fast bench
backend and ``twistd -n flm`` nodes ``a`` and ``b`` on it with ``reuse_port``.

Throughput: wrk (c=50, non-streaming) against the API's port with node ``a`` alone, then
with ``b`` started beside it (the kernel spreads wrk's connections over both), ``--reps``
times; medians and the 2-node/1-node ratio per pair. The load generator, the backend and
PostgreSQL share the same two cores.

Propagation: a keep-alive connection that the kernel gave to node ``b`` (found from the
log row's ``node``); each change is made through ``a``'s admin API (a key created, then
revoked, in turn) and timed from ``a``'s answer until ``b`` answers that key accordingly
(200 once created; 401 or 429 once revoked). p50 and max over ``--changes``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from typing import Any

from bench import harness, loadgen
from bench.harness import BenchError, median
from bench.soak import wait_quiet

HOST = harness.HOST
CHAT = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]})


def start_node(run: harness.Run, name: str, backend_port: int, url: str) -> harness.FLM:
    node = run.add(harness.FLM(run.logdir, harness.temp_dir(f"flm-bench-{name}-"), backend_port,
                               ["--backend-max-concurrent", "64", "--database", url,
                                "--node-name", name, "--reuse-port"], name=f"flm-{name}"))
    node.wait_healthy(timeout=60)
    return node


def chat(conn: http.client.HTTPConnection, key: str) -> tuple[int, str]:
    conn.request("POST", "/v1/chat/completions", body=CHAT, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("x-request-id") or ""


def connection_to(node: str, a: harness.FLM, api: dict[str, Any]) -> http.client.HTTPConnection:
    """A keep-alive connection the kernel gave to ``node`` (read from the log rows)."""
    for _ in range(5):
        conns = [http.client.HTTPConnection(HOST, api["port"], timeout=10) for _ in range(8)]
        ids = {chat(c, api["key"])[1]: c for c in conns}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = a.admin("GET", f"/api/apis/{api['id']}/logs?limit=200")
            nodes = {r["request_id"]: r["node"] for r in body.get("items", [])}
            if all(i in nodes for i in ids):
                break
            time.sleep(0.1)
        found = [c for i, c in ids.items() if nodes.get(i) == node]
        for c in conns:
            if not found or c is not found[0]:
                c.close()
        if found:
            return found[0]
    raise BenchError(f"no connection reached node {node}")


def propagation(a: harness.FLM, api: dict[str, Any], on_b: http.client.HTTPConnection,
                changes: int) -> list[float]:
    took = []
    key: dict[str, Any] = {}
    for i in range(changes):
        if i % 2 == 0:
            status, key = a.admin("POST", f"/api/apis/{api['id']}/keys", {"name": f"k{i}"})
            wanted = {200}
        else:
            status, _ = a.admin("DELETE", f"/api/apis/{api['id']}/keys/{key['id']}")
            wanted = {401, 429}
        if status not in (200, 201):
            raise BenchError(f"admin change {i} answered {status}")
        start = time.perf_counter()
        while chat(on_b, key["key"])[0] not in wanted:
            if time.perf_counter() - start > 10:
                raise BenchError(f"change {i} not in effect on node b after 10 s")
        took.append(time.perf_counter() - start)
    return took


def throughput(args: argparse.Namespace, run: harness.Run, a: harness.FLM, api: dict[str, Any],
               lua: Any, backend_port: int, url: str) -> list[tuple[float, float]]:
    pairs = []
    loadgen.run_wrk(api["port"], lua, args.concurrency, 2)  # warm-up
    for rep in range(args.reps):
        one = loadgen.run_wrk(api["port"], lua, args.concurrency, args.duration)
        b = start_node(run, "b", backend_port, url)
        harness_wait_serving(b, api)
        two = loadgen.run_wrk(api["port"], lua, args.concurrency, args.duration)
        b.stop()
        pairs.append((one["rps"], two["rps"]))
        print(f"  rep {rep + 1}: 1 node {one['rps']:7.0f} req/s (errors "
              f"{one['errors'] + one['non2xx']}), 2 nodes {two['rps']:7.0f} req/s (errors "
              f"{two['errors'] + two['non2xx']})", flush=True)
    return pairs


def harness_wait_serving(node: harness.FLM, api: dict[str, Any], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = node.admin("GET", "/api/nodes")
        mine = [n for n in body.get("items", []) if n["name"] == "b"] if status == 200 else []
        if mine and api["name"] in mine[0]["apis"]:
            return
        time.sleep(0.05)
    raise BenchError("node b does not serve the API")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FLM nodes: propagation and 1 vs 2 nodes")
    p.add_argument("--changes", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    reason = loadgen.preflight()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    with harness.postgresql_database(args.server) as (_, url):
        with harness.Run(args.keep_logs) as run:
            backend, backend_port = harness.start_backend(run.logdir)
            run.add(backend)
            a = start_node(run, "a", backend_port, url)
            api = a.open_api(name="bench", model="bench-model", max_concurrent=64,
                             max_queue=512, queue_timeout_s=60, upstream_timeout_s=60)
            lua = loadgen.write_lua(run.logdir / "chat.lua", loadgen.chat_body(False), api["key"])
            wait_quiet()
            print(f"throughput, c={args.concurrency}, {args.reps} x {args.duration:g} s, "
                  "node a alone then a + b (reuse_port):", flush=True)
            pairs = throughput(args, run, a, api, lua, backend_port, url)
            b = start_node(run, "b", backend_port, url)
            harness_wait_serving(b, api)
            on_b = connection_to("b", a, api)
            took = propagation(a, api, on_b, args.changes)
            on_b.close()
            report(pairs, took)
            return 0
        return 1  # the run failed: harness.Run said why


def report(pairs: list[tuple[float, float]], took: list[float]) -> None:
    ratios = [two / one for one, two in pairs]
    print(f"\n1 node  {median([o for o, _ in pairs]):7.0f} req/s (median)")
    print(f"2 nodes {median([t for _, t in pairs]):7.0f} req/s (median); 2/1 per pair: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; median {median(ratios):.3f}")
    ms = sorted(t * 1000 for t in took)
    print(f"propagation a -> b over {len(ms)} changes (key created / revoked in turn): "
          f"p50 {median(ms):.1f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, "
          f"max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
