"""Many slow streams over two backends (issue 12): FLM's memory per open stream and the
delay FLM adds to each event.

``python -m bench.streams [--streams 1000] [--events 30] [--probe]``: a slow SSE backend
(this file, ``--serve``) runs twice, as two backends of one FLM. Each stream sends
``--events`` events 100 ms apart, each stamped with the time it is written; the first one
at a random moment of the first 100 ms (real streams start when their requests come, not
in step), later ones on a fixed schedule (no drift).

What FLM adds, measured so that the load generator's own lag cancels out:

- ``--streams`` clients go through FLM while ``--control`` clients (10 % by default) go
  straight to the same backends, at the same time, from the same client process: both see
  the same backends and the same client; only the FLM streams cross FLM. Per event, the
  delay is its arrival time minus its stamp; FLM's added delay is the p99 through FLM
  minus the p99 of the control streams. "Steady" counts the events written after every
  stream had its first event (the opening burst of 1,000 requests apart).
- ``--probe``: FLM also times each event itself (``bench/probe/sitecustomize.py``, on FLM's
  ``PYTHONPATH`` for this run only): stamp to FLM's relay, stamp to FLM's socket write.
- Then the same number of streams straight to the backends alone (no FLM running load):
  the load generator's own p99 at this load, for reference.

The client is a raw asyncio ``Protocol`` (no HTTP library: it only finds the stamps), so
it stays light; its CPU and FLM's are printed. Memory: FLM's RSS with every stream open,
minus its RSS before, per stream. Everything on 127.0.0.1; every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import harness
from bench.backends import start_fleet_of
from bench.harness import HOST, BenchError

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
EVENT = b'data: {"t": %.6f, "i": %d, "choices": [{"delta": {"content": "x"}}]}\n\n'
PROBE = Path(__file__).parent / "probe"


async def serve(port: int, events: int) -> None:
    """The slow backend: /v1/models and /health answer at once, chat streams slowly
    (``"bench_events": N`` in the body overrides ``events``)."""
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if b"/chat/completions" not in line:
                    body = b'{"object":"list","data":[{"id":"bench-model","object":"model"}]}'
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                n = int(json.loads(body).get("bench_events", events))
                writer.write(HEAD)
                start = loop.time() + random.random() * 0.1
                for i in range(n):
                    await asyncio.sleep(max(0.0, start + i * 0.1 - loop.time()))
                    chunk = EVENT % (time.time(), i)
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                done = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, port, backlog=4096)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class Stream(asyncio.Protocol):
    """One streaming request; per event (stamp, delay in ms) into ``delays``."""

    def __init__(self, request: bytes, delays: list[tuple[float, float]],
                 first: list[float], done: asyncio.Future[None]) -> None:
        self.request = request
        self.delays = delays
        self.first = first
        self.done = done
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data
        at = buf.find(b'{"t": ')
        while at >= 0:
            comma = buf.find(b",", at)
            if comma < 0:
                break
            stamp = float(buf[at + 6:comma])
            if not self.first:
                self.first.append(now)
            self.delays.append((stamp, (now - stamp) * 1e3))
            at = buf.find(b'{"t": ', comma)
        self.buf = buf[at:] if at >= 0 else buf[-16:]
        if b"[DONE]" in buf:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def request_bytes(key: str | None, events: int | None = None) -> bytes:
    payload: dict[str, Any] = {"model": "bench-model", "stream": True,
                               "stream_options": {"include_usage": True},
                               "messages": [{"role": "user", "content": "hi"}]}
    if events is not None:
        payload["bench_events"] = events
    body = json.dumps(payload).encode()
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (auth, len(body), body))


async def load(groups: dict[str, tuple[list[tuple[int, str | None]], int]],
               events: int | None = None, rss: Any = None) -> dict[str, Any]:
    """Open every group's streams at once; per group the (stamp, ms) of every event."""
    loop = asyncio.get_running_loop()
    delays: dict[str, list[tuple[float, float]]] = {g: [] for g in groups}
    firsts: list[list[float]] = []
    waits = []
    for name, (targets, n) in groups.items():
        for i in range(n):
            port, key = targets[i % len(targets)]
            first: list[float] = []
            firsts.append(first)
            done: asyncio.Future[None] = loop.create_future()
            waits.append(done)
            await loop.create_connection(
                lambda k=key, f=first, d=done, g=name: Stream(request_bytes(k, events),
                                                               delays[g], f, d), HOST, port)
    peak = 0.0
    pending = set(waits)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.2)
        if rss is not None:
            peak = max(peak, rss())
    opened = max((f[0] for f in firsts if f), default=0.0)
    return {"delays": delays, "all_open_at": opened, "peak_rss": peak,
            "missing_first": sum(1 for f in firsts if not f)}


def pct(values: list[float], q: float = 0.99) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else float("nan")


def p99(rows: list[tuple[float, float]], since: float = 0.0) -> float:
    return pct([ms for stamp, ms in rows if stamp >= since])


def read_probe(flm: harness.FLM, path: Path) -> dict[str, list[tuple[float, float]]]:
    os.kill(flm.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise BenchError("the probe wrote nothing: is bench/probe on FLM's PYTHONPATH?")
        time.sleep(0.05)
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--events", type=int, default=30)
    p.add_argument("--control", type=int, help="streams straight to the backends, "
                   "alongside (default: 10 %% of --streams)")
    p.add_argument("--probe", action="store_true", help="FLM times each event itself")
    p.add_argument("--serve", type=int, metavar="PORT", help="run the slow backend")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.events))
        return 0
    control = args.streams // 10 if args.control is None else args.control
    with harness.Run(args.keep_logs) as run:
        argv_backend = [harness.PY, "-m", "bench.streams", "--events", str(args.events),
                        "--serve"]
        probe_file = run.logdir / "probe.json"
        saved = dict(os.environ)
        if args.probe:
            os.environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(PROBE), os.environ.get("PYTHONPATH")]))
            os.environ["FLM_BENCH_PROBE"] = str(probe_file)
        try:
            flm, ports = start_fleet_of(run, [argv_backend + ["0"], argv_backend + ["0"]])
        finally:
            os.environ.clear()
            os.environ.update(saved)
        api = flm.open_api(name="streams", model="bench-model", max_concurrent=1024,
                           max_queue=4096)
        proc = psutil.Process(flm.pid)
        me = psutil.Process()
        via_flm = [(api["port"], api["key"])]
        direct = [(port, None) for port in ports]
        asyncio.run(load({"flm": (via_flm, 20), "control": (direct, 2)}, events=3))  # warm-up
        if args.probe:
            read_probe(flm, probe_file)
            probe_file.unlink()
        before = proc.memory_info().rss
        cpu0 = harness.cpu_seconds(proc), harness.cpu_seconds(me)
        t0 = time.monotonic()
        res = asyncio.run(load({"flm": (via_flm, args.streams), "control": (direct, control)},
                               rss=lambda: proc.memory_info().rss))
        wall = time.monotonic() - t0
        cpu = harness.cpu_seconds(proc) - cpu0[0], harness.cpu_seconds(me) - cpu0[1]
        probe = read_probe(flm, probe_file) if args.probe else None
        alone = asyncio.run(load({"direct": (direct, args.streams)}))
        flm_rows, ctl_rows = res["delays"]["flm"], res["delays"]["control"]
        steady = res["all_open_at"]
        alone_steady = alone["all_open_at"]
        result: dict[str, Any] = {
            "streams": args.streams, "control_streams": control,
            "events_per_stream": args.events,
            "events_seen_flm": len(flm_rows), "events_seen_control": len(ctl_rows),
            "rss_before_mb": before / 2**20, "rss_peak_mb": res["peak_rss"] / 2**20,
            "kb_per_stream": (res["peak_rss"] - before) / args.streams / 1024,
            "cpu_share_flm": cpu[0] / wall, "cpu_share_client": cpu[1] / wall,
            "p99_flm_ms": p99(flm_rows), "p99_control_ms": p99(ctl_rows),
            "p99_added_ms": p99(flm_rows) - p99(ctl_rows),
            "steady_p50_flm_ms": pct([ms for s, ms in flm_rows if s >= steady], 0.5),
            "steady_p99_flm_ms": p99(flm_rows, steady),
            "steady_p99_control_ms": p99(ctl_rows, steady),
            "steady_p99_added_ms": p99(flm_rows, steady) - p99(ctl_rows, steady),
            "alone_p99_direct_ms": p99(alone["delays"]["direct"]),
            "alone_steady_p99_direct_ms": p99(alone["delays"]["direct"], alone_steady)}
        if probe is not None:
            for what in ("received", "sent"):
                rows = [(s, lag * 1e3) for s, lag in probe[what]]
                result[f"probe_p99_stamp_to_{what}_ms"] = p99(rows)
                result[f"probe_steady_p99_stamp_to_{what}_ms"] = p99(rows, steady)
        print(json.dumps(result, indent=2))
        expected = args.streams * args.events
        if len(flm_rows) < 0.99 * expected:
            raise BenchError(f"only {len(flm_rows)} of {expected} events through FLM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
