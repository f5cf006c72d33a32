"""Many slow streams over two backends (issue 12): FLM's memory per open stream and the
delay FLM adds to each event.

``python -m bench.streams [--streams 1000] [--events 30]``: a slow SSE backend (this file,
``--serve``: every stream sends ``--events`` events 100 ms apart, each stamped with its send
time) runs twice, as two backends of one FLM; ``--streams`` clients (asyncio, one connection
each) open their streams through FLM at once, then as many straight to the backends. Per
event, the delay is its arrival time minus its stamp; FLM's added delay is the p99 through
FLM minus the p99 straight. Memory: FLM's RSS with every stream open, minus its RSS before,
per stream. Everything on 127.0.0.1; every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import psutil

from bench import harness
from bench.backends import start_fleet_of
from bench.harness import HOST, BenchError

#: Events before this one in each stream fall in the opening burst (1,000 streams opened at
#: once): reported apart, "steady" is every later event.
STEADY_FROM = 5

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


async def serve(port: int, events: int) -> None:
    """The slow backend: /v1/models and /health answer at once, chat streams slowly."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if b"/chat/completions" not in line:
                    body = b'{"object":"list","data":[{"id":"bench-model","object":"model"}]}'
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                writer.write(HEAD)
                for i in range(events):
                    data = json.dumps({"t": time.time(), "i": i,
                                       "choices": [{"delta": {"content": "x"}}]})
                    chunk = b"data: " + data.encode() + b"\n\n"
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    await asyncio.sleep(0.1)
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


async def one_stream(port: int, key: str | None, delays: list[Any], opened: list[int]
                     ) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    body = json.dumps({"model": "bench-model", "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (auth, len(body), body))
    await writer.drain()
    opened[0] += 1
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.time()
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                at = event.find(b'{"t": ')
                if at >= 0:
                    stamp = float(event[at + 6:event.index(b",", at)])
                    i = int(event[event.index(b'"i": ') + 5:event.index(b",", event.index(b'"i": '))])
                    delays.append((i, (now - stamp) * 1e3))
            if b"[DONE]" in buf or b"data: [DONE]" in data:
                break
    finally:
        opened[0] -= 1
        writer.close()


async def load(targets: list[tuple[int, str | None]], n: int, rss: Any
               ) -> tuple[list[Any], float]:
    delays: list[Any] = []
    opened = [0]
    tasks = [asyncio.create_task(one_stream(*targets[i % len(targets)], delays, opened))
             for i in range(n)]
    peak = 0.0
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
        if rss is not None:
            peak = max(peak, rss())
    for t in tasks:
        t.result()
    return delays, peak


def p99(delays: list[Any], first: int = 0) -> float:
    values = sorted(ms for i, ms in delays if i >= first)
    return values[int(0.99 * (len(values) - 1))] if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--events", type=int, default=30)
    p.add_argument("--serve", type=int, metavar="PORT", help="run the slow backend")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.events))
        return 0
    with harness.Run(args.keep_logs) as run:
        argv_backend = [harness.PY, "-m", "bench.streams", "--events", str(args.events),
                        "--serve"]
        flm, ports = start_fleet_of(run, [argv_backend + ["0"], argv_backend + ["0"]])
        api = flm.open_api(name="streams", model="bench-model", max_concurrent=1024,
                           max_queue=4096)
        proc = psutil.Process(flm.pid)
        asyncio.run(load([(api["port"], api["key"])], 20, None))  # warm-up
        before = proc.memory_info().rss
        delays_flm, peak = asyncio.run(load([(api["port"], api["key"])], args.streams,
                                            lambda: proc.memory_info().rss))
        delays_direct, _ = asyncio.run(load([(p, None) for p in ports], args.streams, None))
        expected = args.streams * (args.events + 1)
        result = {
            "streams": args.streams, "events_per_stream": args.events,
            "events_seen_flm": len(delays_flm), "events_seen_direct": len(delays_direct),
            "rss_before_mb": before / 2**20, "rss_peak_mb": peak / 2**20,
            "kb_per_stream": (peak - before) / args.streams / 1024,
            "steady_from_event": STEADY_FROM,
            "p99_event_delay_flm_ms": p99(delays_flm),
            "p99_event_delay_direct_ms": p99(delays_direct),
            "p99_added_ms": p99(delays_flm) - p99(delays_direct),
            "steady_p99_flm_ms": p99(delays_flm, STEADY_FROM),
            "steady_p99_direct_ms": p99(delays_direct, STEADY_FROM),
            "steady_p99_added_ms": p99(delays_flm, STEADY_FROM) - p99(delays_direct,
                                                                       STEADY_FROM)}
        print(json.dumps(result, indent=2))
        if len(delays_flm) < 0.99 * expected * args.events / (args.events + 1):
            raise BenchError(f"only {len(delays_flm)} events through FLM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
