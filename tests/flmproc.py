"""``twistd -n flm`` as a subprocess: the plumbing the end-to-end tests and the benchmarks
share (stdlib only). Build its command line and environment, pick free loopback ports,
call its admin API, wait for states, stop it (SIGTERM, then SIGKILL).

``tests/e2e/conftest.py`` (``Gateway``) and ``bench/harness.py`` (``FLM``) wrap these in
the shape each needs; neither starts or stops FLM any other way.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (the usual small race)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def twistd_command() -> list[str]:
    """The ``twistd`` of this interpreter (the venv's), run by this interpreter."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [sys.executable, str(script)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """A TOML config file of flat ``settings``."""
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    return path


def flm_command(data_dir: Path, admin_port: int, backend_url: str, *,
                config: Path | None = None, args: Iterable[str] = ()) -> list[str]:
    """``twistd -n flm`` on ``data_dir``, its admin API on loopback ``admin_port``."""
    command = twistd_command() + [
        "-n", "--pidfile=", "flm", "--data-dir", str(data_dir),
        "--admin", f"tcp:{admin_port}:interface={HOST}", "--backend", backend_url, *args]
    if config is not None:
        command += ["--config", str(config)]
    return command


def flm_env(token: str, clean: bool = True) -> dict[str, str]:
    """The environment for FLM: the admin token, this repository importable; ``clean``
    drops FLM_/OLLAMA_/OPENAI_ variables of the caller so they cannot change the run."""
    env = {k: v for k, v in os.environ.items()
           if not (clean and k.startswith(("FLM_", "OLLAMA_", "OPENAI_")))}
    env["FLM_ADMIN_TOKEN"] = token
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def call(port: int, method: str, path: str, body: Any = None, token: str | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:
    """One JSON request on a fresh loopback connection: (status, decoded body or text)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    finally:
        conn.close()


def healthy(admin_port: int, timeout: float = 1.0) -> bool:
    """Whether ``GET /health`` answers 200."""
    try:
        return call(admin_port, "GET", "/health", timeout=timeout)[0] == 200
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> bool:
    """SIGTERM and wait; SIGKILL past ``timeout``. True when it stopped on SIGTERM."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
        return False
