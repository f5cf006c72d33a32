"""Load generation: wrk (with a Lua script for the POST body and headers) and a
small keep-alive Python client for per-request timings (latency, time to first byte).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness import HOST, BenchError, flm_available

WRK_INSTALL = "wrk is not installed: apt-get install -y wrk   (Debian package 'wrk')"

CHAT_BODY: dict[str, Any] = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
}

# wrk's summary as one JSON line, appended to every Lua script here (%-formatted: %% is %).
LUA_REPORT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%.0f,"duration_us":%%.0f,"bytes":%%.0f,"connect":%%.0f,"read":%%.0f,' ..
    '"write":%%.0f,"status":%%.0f,"timeout":%%.0f,"p50_us":%%.1f,"p90_us":%%.1f,"p99_us":%%.1f,' ..
    '"mean_us":%%.1f,"max_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""

_LUA = """\
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
%(auth)s
""" + LUA_REPORT


def preflight(wrk: bool = True, flm: bool = True) -> str | None:
    """Why this benchmark cannot run here (wrk or the flm plugin missing), or None."""
    try:
        if wrk:
            wrk_path()
        return flm_available() if flm else None
    except BenchError as e:
        return str(e)


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise BenchError(WRK_INSTALL)
    return found


def chat_body(stream: bool) -> dict[str, Any]:
    body = dict(CHAT_BODY)
    if stream:
        body["stream"] = True
    return body


def write_lua(path: Path, body: dict[str, Any], key: str | None) -> Path:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    path.write_text(_LUA % {"body": json.dumps(body), "auth": auth})
    return path


def run_wrk(port: int, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run (one thread: the machine has two cores to share with the servers)."""
    argv = [wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(script), f"http://{HOST}:{port}/v1/chat/completions"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            res = json.loads(line[len("WRKJSON "):])
            res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
            res["errors"] = res["connect"] + res["read"] + res["write"] + res["timeout"]
            res["non2xx"] = res["status"]
            return res
    raise BenchError(f"wrk gave no result: {out.stdout}\n{out.stderr}")


class KeepAliveClient:
    """One persistent connection; each call returns per-request timings in ms."""

    def __init__(self, port: int, key: str | None) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def post(self, body: bytes) -> dict[str, float]:
        """POST /v1/chat/completions; time to headers, to first body bytes, to the end."""
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body=body, headers=self.headers)
        resp = self.conn.getresponse()
        t_head = time.perf_counter()
        first = resp.read1(65536)
        t_first = time.perf_counter()
        rest = resp.read()
        t_end = time.perf_counter()
        if resp.status != 200 or not (first or rest):
            raise BenchError(f"POST answered {resp.status}: {(first + rest)[:300]!r}")
        return {"head_ms": (t_head - t0) * 1e3, "ttfb_ms": (t_first - t0) * 1e3,
                "total_ms": (t_end - t0) * 1e3, "bytes": float(len(first) + len(rest)),
                "done": float(b"[DONE]" in first + rest)}

    def close(self) -> None:
        self.conn.close()


def interleaved(targets: dict[str, tuple[int, str | None]], body: bytes, n: int,
                block: int = 50) -> dict[str, list[dict[str, float]]]:
    """``n`` requests per target, one connection each, alternating in blocks of ``block``
    so that machine noise falls on every target alike."""
    clients = {name: KeepAliveClient(port, key) for name, (port, key) in targets.items()}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    try:
        for name, client in clients.items():  # warm the connections (and FLM's pool)
            for _ in range(min(20, n)):
                client.post(body)
        done = 0
        while done < n:
            size = min(block, n - done)
            for name, client in clients.items():
                for _ in range(size):
                    samples[name].append(client.post(body))
            done += size
    finally:
        for client in clients.values():
            client.close()
    return samples
