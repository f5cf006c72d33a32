"""Soak: memory and file descriptors of FLM over many requests and over time.

    python -m bench.soak --requests 200000        # issue 4: RSS after warm-up vs at the end
    python -m bench.soak [--minutes 10]           # issue 6: faults injected, a line per minute

``--requests N`` drives ``N`` requests (half streaming, half not) through one API with
wrk, in 5 s blocks at concurrency 1, 5 and 10 in turn, against the fast bench backend,
and compares FLM's RSS and open file descriptors after the first ``--warmup-requests``
with the end.  Target: RSS growth <= 5 MB.

``--minutes M`` (default 10, 60 for the full hour) runs an asyncio keep-alive client at
concurrency 1, 5 and 10 in turn (``--phase-seconds`` each) against FLM in front of
``tests.fakes.backend``, half of the requests streaming, with a few % carrying an
``X-Fake-Fail`` header (500, reset, garbage, stalls, death mid-stream) and a 1 s
``upstream_timeout_s`` on the API so stalls end.  Every minute it prints the requests,
the error rate (all, and among requests without an injected fault), p99 latency, RSS and
open fds; at the end the RSS growth per hour after warm-up (target <= 5 MB/h) and whether
the fds are stable.  Every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from array import array
from pathlib import Path

import psutil

from bench import harness, loadgen
from bench.harness import BenchError, cpu_seconds

# -- shared by the benchmarks of this file, bench.logging_cost and bench.idle ---------------

_BENCH_MARKERS = ("-m bench.", "bench/", "/usr/bin/wrk", "py-spy")
# One empty file per waiting benchmark, named by its pid: two benchmarks that wait for each
# other would wait forever, so a waiting benchmark ignores younger ones that wait too.
WAITING_DIR = Path(tempfile.gettempdir()) / "flm-bench-waiting"


def _is_bench(cmdline: list[str] | None) -> bool:
    cmd = " ".join(cmdline or ())
    return any(m in cmd for m in _BENCH_MARKERS) and "grep" not in cmd


def _owner(proc: psutil.Process) -> psutil.Process:
    """The outermost benchmark process above ``proc`` (e.g. ``timeout ... python -m bench.x``)."""
    owner = proc
    for parent in proc.parents():
        try:
            if _is_bench(parent.cmdline()):
                owner = parent
        except psutil.Error:
            pass
    return owner


def _waiting_pids() -> set[int]:
    try:
        return {int(f.name) for f in WAITING_DIR.iterdir() if f.name.isdigit()}
    except OSError:
        return set()


def other_benchmarks() -> list[str]:
    """Benchmarks on the machine other than this one (its parents and children), leaving out
    younger ones that are themselves waiting for a quiet machine."""
    me = psutil.Process()
    ours = {me.pid} | {p.pid for p in me.children(recursive=True)} | {p.pid for p in me.parents()}
    my_start = _owner(me).create_time()
    waiting = _waiting_pids()
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] in ours or not _is_bench(p.info["cmdline"]):
            continue
        try:
            owner = _owner(p)
            tree = {owner.pid} | {c.pid for c in owner.children(recursive=True)}
            if tree & waiting and owner.create_time() > my_start:
                continue
        except psutil.Error:
            continue
        found.append(f"{p.info['pid']} {' '.join(p.info['cmdline'])[:120]}")
    return found


def wait_quiet(max_wait: float = 1200.0) -> None:
    """Wait (bounded) until no other benchmark runs: the machine is shared and has 2 cores.

    ``FLM_BENCH_NO_WAIT=1`` skips the wait (smoke runs whose figures do not matter).
    """
    if os.environ.get("FLM_BENCH_NO_WAIT") == "1":
        return
    marker = WAITING_DIR / str(os.getpid())
    try:
        WAITING_DIR.mkdir(exist_ok=True)
        marker.touch()
    except OSError:
        pass
    try:
        deadline = time.monotonic() + max_wait
        others = other_benchmarks()
        if others:
            print(f"waiting for other benchmarks to end (at most {max_wait:.0f} s): {others[0]}", flush=True)
        while others and time.monotonic() < deadline:
            time.sleep(5)
            others = other_benchmarks()
        if others:
            print(f"WARNING: still running, measuring anyway: {others}", flush=True)
    finally:
        marker.unlink(missing_ok=True)


def sample(proc: psutil.Process) -> dict[str, float]:
    return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(), "cpu_s": cpu_seconds(proc),
            "threads": proc.num_threads()}


def start_flm(logdir: Path, backend_port: int, extra: list[str] | None = None) -> harness.FLM:
    return harness.FLM(logdir, harness.temp_dir("flm-bench-data-"), backend_port, extra)


def prometheus_lines(flm: harness.FLM, *words: str) -> list[str]:
    status, text = harness.call(flm.admin_port, "GET", "/metrics")
    if status != 200 or not isinstance(text, str):
        return [f"/metrics -> {status}"]
    return [ln for ln in text.splitlines() if not ln.startswith("#") and any(w in ln for w in words)]


# -- issue 4: N requests with wrk -------------------------------------------------------------

_MIXED_LUA = """\
local reqs = {}
local n = 0
init = function(args)
  local h = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(key)s"}
  reqs[1] = wrk.format("POST", "/v1/chat/completions", h, [==[%(plain)s]==])
  reqs[2] = wrk.format("POST", "/v1/chat/completions", h, [==[%(stream)s]==])
end
request = function()
  n = n + 1
  return reqs[(n %% 2) + 1]
end
""" + loadgen.LUA_REPORT


def soak_requests(args: argparse.Namespace, run: harness.Run) -> int:
    logdir = run.logdir
    backend, backend_port = harness.start_backend(logdir)
    run.add(backend)
    flm = run.add(start_flm(logdir, backend_port, ["--backend-max-concurrent", "64"]))
    api = flm.open_api(name="soak", model="bench-model", max_concurrent=64, max_queue=512,
                   queue_timeout_s=60, upstream_timeout_s=60)
    script = logdir / "mixed.lua"
    script.write_text(_MIXED_LUA % {"key": api["key"], "plain": json.dumps(loadgen.chat_body(False)),
                                    "stream": json.dumps(loadgen.chat_body(True))})
    proc = psutil.Process(flm.pid)
    wait_quiet()
    start = sample(proc)
    print(f"FLM pid {flm.pid}, API port {api['port']}; start: RSS {start['rss_mb']:.1f} MB, "
          f"fds {start['fds']}, threads {start['threads']}")
    print(f"{args.requests:,} requests, half streaming, wrk blocks of {args.block_seconds:g} s "
          f"at c=1, 5, 10 in turn; warm-up {args.warmup_requests:,}", flush=True)
    total = errors = non2xx = 0
    warm: dict[str, float] | None = None
    series: list[tuple[int, dict[str, float]]] = []
    t0 = time.monotonic()
    rps = 500.0
    block = 0
    others_seen: set[str] = set()
    while total < args.requests:
        if time.monotonic() - t0 > args.max_seconds:
            raise BenchError(f"stopped after {args.max_seconds:.0f} s with {total:,} requests")
        if not flm.child.alive():
            raise BenchError(f"FLM exited:\n{flm.child.tail()}")
        conc = (1, 5, 10)[block % 3]
        block += 1
        seconds = min(args.block_seconds, max(1.0, (args.requests - total) / rps))
        res = loadgen.run_wrk(api["port"], script, conc, seconds)
        rps = max(50.0, res["rps"])
        total += int(res["requests"])
        errors += int(res["errors"])
        non2xx += int(res["non2xx"])
        now = sample(proc)
        series.append((total, now))
        if warm is None and total >= args.warmup_requests:
            warm = now
            print(f"  warm-up done at {total:,} requests: RSS {now['rss_mb']:.1f} MB, fds {now['fds']}")
        if block % 6 == 0 or total >= args.requests:
            print(f"  {total:>8,} requests  {time.monotonic() - t0:6.0f} s  last block c={conc:<2} "
                  f"{res['rps']:6.0f} req/s p99 {res['p99_us'] / 1e3:6.2f} ms  RSS {now['rss_mb']:6.1f} MB  "
                  f"fds {now['fds']}  errors {errors} non-2xx {non2xx}", flush=True)
            others_seen.update(other_benchmarks())
    end = series[-1][1]
    time.sleep(3)  # the last log flush; then FLM at rest
    rest = sample(proc)
    elapsed = time.monotonic() - t0
    assert warm is not None
    growth = end["rss_mb"] - warm["rss_mb"]
    print()
    print(f"requests {total:,} in {elapsed:.0f} s ({total / elapsed:.0f} req/s), socket errors {errors}, "
          f"non-2xx {non2xx}")
    print(f"RSS: start {start['rss_mb']:.1f} MB, after warm-up {warm['rss_mb']:.1f} MB, end {end['rss_mb']:.1f} MB, "
          f"at rest 3 s later {rest['rss_mb']:.1f} MB; max {max(s['rss_mb'] for _, s in series):.1f} MB")
    print(f"  growth after warm-up: {growth:+.2f} MB over {total - args.warmup_requests:,} requests "
          f"[{'PASS' if growth <= 5 else 'MISS'}] target <= 5 MB")
    steps = [series[i] for i in range(0, len(series), max(1, len(series) // 10))] + [series[-1]]
    print("  RSS by requests: " + ", ".join(f"{n // 1000}k {s['rss_mb']:.1f}" for n, s in steps))
    print(f"open fds: start {start['fds']}, after warm-up {warm['fds']}, end {end['fds']}, at rest {rest['fds']} "
          f"(threads {rest['threads']})")
    print(f"FLM CPU: {(end['cpu_s'] - start['cpu_s']) / total * 1000:.3f} s per 1,000 requests")
    for line in prometheus_lines(flm, "dropped", "flm_requests_total"):
        print(f"  /metrics: {line}")
    if others_seen:
        print(f"note: other benchmarks ran during the soak: {sorted(others_seen)}")
    return 0


# -- issue 6: minutes with faults, asyncio client -------------------------------------------

# X-Fake-Fail value -> share of requests (the rest carry no fault): 2.5 % in all.
FAULTS = {"status:500": 0.010, "reset": 0.005, "garbage": 0.004, "die_midstream": 0.005,
          "stall_midstream": 0.0005, "stall": 0.0005}
MODEL = "llama3.2:1b"


class Client:
    """One keep-alive HTTP/1.1 connection to the API; reconnects after any failure."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def post(self, body: bytes, fault: str | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(harness.HOST, self.port)
        extra = f"X-Fake-Fail: {fault}\r\n" if fault else ""
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {harness.HOST}:{self.port}\r\n"
                f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n")
        self.writer.write(head.encode() + body)
        reader = self.reader
        assert reader is not None
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            data = b"".join(parts)
        else:
            data = await reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data


def outcome(status: int | None, stream: bool, data: bytes) -> str:
    if status is None:
        return "cut"  # reset, truncated or timed out on the client side
    if status != 200:
        return f"http_{status}"
    if stream:
        if b"event: error" in data:
            return "sse_error_event"
        if b"data: [DONE]" not in data:
            return "stream_incomplete"
    return "ok"


class Soak:
    """The load: ``concurrency`` of 10 keep-alive workers busy; per-minute figures kept small."""

    def __init__(self, args: argparse.Namespace, port: int, key: str, proc: psutil.Process) -> None:
        self.args = args
        self.port = port
        self.key = key
        self.proc = proc
        self.rng = random.Random(args.seed)
        self.recent: list[tuple[float, float, str | None, str]] = []  # (end, latency s, fault, outcome)
        self.outcomes: dict[tuple[str, str], int] = {}  # (fault, outcome) -> count
        self.lat_all = array("d")
        self.lat_clean = array("d")
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.concurrency = 1
        self.stop_at = 0.0
        self.bodies = {s: json.dumps({"model": MODEL, "stream": s, "max_tokens": 16,
                                      "messages": [{"role": "user", "content": "Say hello."}]}).encode()
                       for s in (False, True)}
        self.fault_table = list(FAULTS.items())

    def pick_fault(self) -> str | None:
        x = self.rng.random()
        for name, share in self.fault_table:
            if x < share:
                return name
            x -= share
        return None

    def record(self, end: float, latency: float, fault: str | None, out: str) -> None:
        self.recent.append((end, latency, fault, out))
        key = (fault or "none", out)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self.lat_all.append(latency)
        if fault is None:
            self.lat_clean.append(latency)

    def count(self, clean_only: bool = False, failed: bool = False) -> int:
        return sum(n for (f, o), n in self.outcomes.items()
                   if (not clean_only or f == "none") and (not failed or o != "ok"))

    async def worker(self, index: int) -> None:
        client = Client(self.port, self.key)
        try:
            while time.monotonic() < self.stop_at:
                if index >= self.concurrency:
                    await client.close()
                    await asyncio.sleep(0.05)
                    continue
                stream = self.rng.random() < 0.5
                fault = self.pick_fault()
                t0 = time.monotonic()
                status: int | None = None
                data = b""
                try:
                    status, data = await asyncio.wait_for(client.post(self.bodies[stream], fault), 30)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                        ValueError, IndexError):
                    await client.close()
                t1 = time.monotonic()
                self.record(t1, t1 - t0, fault, outcome(status, stream, data))
        finally:
            await client.close()

    async def phases(self) -> None:
        i = 0
        while time.monotonic() < self.stop_at:
            self.concurrency = (1, 5, 10)[i % 3]
            i += 1
            await asyncio.sleep(min(self.args.phase_seconds, max(0.0, self.stop_at - time.monotonic())))

    async def sampler(self, t0: float) -> None:
        """RSS and fds every 10 s; a report line every minute."""
        k = 1
        while time.monotonic() < self.stop_at:
            await asyncio.sleep(max(0.0, min(t0 + k * 10, self.stop_at) - time.monotonic()))
            now = time.monotonic()
            self.samples.append((now - t0, sample(self.proc)))
            if k % 6 == 0 or now >= self.stop_at:
                self.report(int((k + 5) // 6), t0)
            k += 1

    def report(self, minute: int, t0: float) -> None:
        hi = t0 + minute * 60
        rs = [r for r in self.recent if r[0] < hi]
        self.recent = [r for r in self.recent if r[0] >= hi]
        s = self.samples[-1][1]
        if not rs:
            print(f"  min {minute:3d}: no requests", flush=True)
            return
        clean = [r for r in rs if r[2] is None]
        err = sum(r[3] != "ok" for r in rs) / len(rs)
        clean_err = sum(r[3] != "ok" for r in clean)
        print(f"  min {minute:3d}: {len(rs):7,} req  errors {err * 100:5.2f} %  (without injected fault: "
              f"{clean_err})  p99 {pct([r[1] for r in rs], 99) * 1e3:7.1f} ms  "
              f"p99 no-fault {pct([r[1] for r in clean], 99) * 1e3:6.2f} ms  RSS {s['rss_mb']:6.1f} MB  "
              f"fds {s['fds']}", flush=True)
        others = other_benchmarks()
        if others:
            print(f"           note: another benchmark is running: {others[0]}", flush=True)

    async def run(self, seconds: float, report: bool = True) -> None:
        t0 = time.monotonic()
        self.stop_at = t0 + seconds
        tasks = [asyncio.ensure_future(self.worker(i)) for i in range(10)]
        tasks.append(asyncio.ensure_future(self.phases()))
        if report:
            tasks.append(asyncio.ensure_future(self.sampler(t0)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q / 100))]


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den * 3600 if den else float("nan")


def quiet_fds(proc: psutil.Process) -> int:
    time.sleep(2)
    return proc.num_fds()


def soak_minutes(args: argparse.Namespace, run: harness.Run) -> int:
    logdir = run.logdir
    fake = run.add(harness.Child("fake_backend", [harness.PY, "-m", "tests.fakes.backend", "--port", "0"],
                                 logdir))
    fake_port = int(fake.wait_line("FAKE listening on").rsplit(":", 1)[1])
    flm = run.add(start_flm(logdir, fake_port, ["--backend-max-concurrent", "16"]))
    api = flm.open_api(name="soak", model=MODEL, max_concurrent=16, max_queue=64, queue_timeout_s=10,
                       upstream_timeout_s=args.upstream_timeout)
    proc = psutil.Process(flm.pid)
    prime = Soak(args, api["port"], api["key"], proc)  # connections, pools, caches
    prime.fault_table = []
    prime.concurrency = 10
    asyncio.run(prime.run(3, report=False))
    if prime.count(failed=True):
        raise BenchError(f"requests without faults failed while priming: {prime.outcomes}\n{flm.child.tail()}")
    wait_quiet()
    fds0 = quiet_fds(proc)
    start = sample(proc)
    shares = ", ".join(f"{k} {v * 100:g}%" for k, v in FAULTS.items())
    print(f"FLM pid {flm.pid}, API port {api['port']} (upstream_timeout_s {args.upstream_timeout:g}); "
          f"fake backend port {fake_port}")
    print(f"{args.minutes:g} min at c=1, 5, 10 in turn ({args.phase_seconds:g} s each), half streaming; "
          f"faults: {shares}")
    print(f"start: RSS {start['rss_mb']:.1f} MB, fds {fds0} at rest, threads {start['threads']}", flush=True)
    soak = Soak(args, api["port"], api["key"], proc)
    asyncio.run(soak.run(args.minutes * 60))
    end = sample(proc)
    fds1 = quiet_fds(proc)
    rest = sample(proc)
    status, health = flm.admin("GET", "/health")
    after = Soak(args, api["port"], api["key"], proc)
    after.fault_table = []
    asyncio.run(after.run(1, report=False))
    works = after.count() > 0 and after.count(failed=True) == 0

    n, n_clean = soak.count(), soak.count(clean_only=True)
    warm_s = args.warmup_minutes * 60
    after_warm = [(t, s["rss_mb"]) for t, s in soak.samples if t >= warm_s]
    warm_rss = after_warm[0][1] if after_warm else float("nan")
    slope = slope_per_hour(after_warm)
    span_h = (after_warm[-1][0] - after_warm[0][0]) / 3600 if len(after_warm) > 1 else float("nan")
    per_hour = (end["rss_mb"] - warm_rss) / span_h if span_h else float("nan")
    fds_run = [int(s["fds"]) for t, s in soak.samples if t >= warm_s]
    fds_ok = fds1 <= fds0 + 10 and (max(fds_run) - min(fds_run) <= 20 if fds_run else True)
    lat_all, lat_clean = list(soak.lat_all), list(soak.lat_clean)
    print()
    print(f"requests {n:,} ({n / (args.minutes * 60):.0f} req/s), with an injected fault {n - n_clean:,}; "
          f"errors {soak.count(failed=True) / n * 100:.2f} % of all, "
          f"{soak.count(clean_only=True, failed=True)} among requests without a fault")
    print(f"latency p50 {pct(lat_all, 50) * 1e3:.2f} ms, p99 {pct(lat_all, 99) * 1e3:.1f} ms "
          f"(without fault: p99 {pct(lat_clean, 99) * 1e3:.2f} ms, max {max(lat_clean) * 1e3:.0f} ms)")
    print("outcomes by injected fault:")
    faults = sorted({f for f, _ in soak.outcomes})
    for fault in faults:
        outs = sorted((o, c) for (f, o), c in soak.outcomes.items() if f == fault)
        print(f"  {fault:16} " + ", ".join(f"{o} {c:,}" for o, c in outs))
    print(f"RSS: start {start['rss_mb']:.1f} MB, after {args.warmup_minutes:g} min warm-up {warm_rss:.1f} MB, "
          f"end {end['rss_mb']:.1f} MB, max {max(s['rss_mb'] for _, s in soak.samples):.1f} MB")
    print(f"  growth after warm-up: {end['rss_mb'] - warm_rss:+.2f} MB in {span_h * 60:.1f} min = "
          f"{per_hour:+.2f} MB/h (end - warm-up), least-squares slope {slope:+.2f} MB/h over "
          f"{len(after_warm)} samples [{'PASS' if max(per_hour, slope) <= 5 else 'MISS'}] target <= 5 MB/h")
    print(f"open fds: at rest before {fds0}, at rest after {fds1}; during the run after warm-up "
          f"min {min(fds_run, default=0)} max {max(fds_run, default=0)} "
          f"[{'STABLE' if fds_ok else 'NOT STABLE'}]")
    print(f"threads {rest['threads']}; FLM CPU {(end['cpu_s'] - start['cpu_s']) / max(1, n) * 1000:.3f} s "
          f"per 1,000 requests; /health after: {status} "
          f"{health.get('status') if isinstance(health, dict) else health}; "
          f"clean requests after the soak: {'all ok' if works else 'FAILED'} ({after.count()})")
    for line in prometheus_lines(flm, "dropped"):
        print(f"  /metrics: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FLM soak: RSS and fds over many requests / minutes")
    p.add_argument("--requests", type=int, help="issue 4 soak: this many requests with wrk (e.g. 200000)")
    p.add_argument("--warmup-requests", type=int, default=20_000)
    p.add_argument("--block-seconds", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=1800.0, help="bound on the --requests soak")
    p.add_argument("--minutes", type=float, default=10.0, help="issue 6 soak length (60 for the full hour)")
    p.add_argument("--warmup-minutes", type=float, default=2.0)
    p.add_argument("--phase-seconds", type=float, default=20.0, help="time at each of c=1, 5, 10")
    p.add_argument("--upstream-timeout", type=float, default=1.0, help="the API's upstream_timeout_s")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    if args.requests is not None and args.requests <= args.warmup_requests:
        p.error("--requests must be larger than --warmup-requests")
    if args.minutes * 60 <= args.warmup_minutes * 60 + 20:
        p.error("--minutes must leave time after --warmup-minutes")
    reason = loadgen.preflight(wrk=args.requests is not None)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    with harness.Run(args.keep_logs) as run:
        return soak_requests(args, run) if args.requests is not None else soak_minutes(args, run)
    return 1


if __name__ == "__main__":
    sys.exit(main())
