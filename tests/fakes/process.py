"""The fake as a subprocess (``python -m tests.fakes.backend``), driven over HTTP."""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from typing import Any

from tests.fakes.server import FakeBackend


class FakeProcess:
    """The fake as a subprocess (``python -m tests.fakes.backend``), driven over HTTP."""

    def __init__(self, log_path: str | None = None) -> None:
        self.log_path = log_path
        self.proc: Any = None
        self.port = 0
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, port: int | None = None, timeout: float = 10.0) -> "FakeProcess":
        """Start on ``port`` (the last one used, else 0) and wait for its line."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        err = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.backend", "--port", str(port if port is not None else self.port)],
            stdout=subprocess.PIPE, stderr=err, env=env, cwd=root,
        )
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = self.proc.stdout.readline()
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"FAKE listening on "):
            self.stop()
            raise RuntimeError(f"the fake backend did not start: {line!r}")
        self.port = int(line.rsplit(b":", 1)[1])
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/_fake/stats")  # type: ignore[no-any-return]

    def configure(self, **config: Any) -> dict[str, Any]:
        return self.call("POST", "/_fake/config", config)  # type: ignore[no-any-return]

    def reset(self) -> None:
        self.call("POST", "/_fake/reset", {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    fake = FakeBackend(reactor, args.port, args.host)
    fake.start()
    print(f"FAKE listening on {args.host}:{fake.port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
