"""Process and HTTP plumbing of the benchmark scripts (stdlib + psutil only).

Starting, calling and stopping ``twistd -n flm`` is ``tests/flmproc.py``, shared with
the end-to-end tests; the fake model server is ``tests/fakes/fast.py``.

Every process started here is a ``Child``; a script's ``Run`` stops them on the way out.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from tests import flmproc

REPO = flmproc.REPO
PY = sys.executable
HOST = flmproc.HOST


class BenchError(Exception):
    """A benchmark could not run; the message says why."""


class Child:
    """A subprocess whose output goes to a log file, stopped by :meth:`stop`."""

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self._fh = open(self.log, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=str(cwd or REPO), stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.returncode: int | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_line(self, prefix: str, timeout: float = 20.0) -> str:
        """Wait for a line starting with ``prefix``; return the rest of it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.02)
        raise BenchError(f"{self.name}: no '{prefix}' line within {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM, wait, SIGKILL if needed; return the seconds the stop took."""
        t0 = time.perf_counter()
        flmproc.stop_process(self.proc, timeout)
        self._fh.close()
        self.returncode = self.proc.returncode
        return time.perf_counter() - t0


free_ports = flmproc.free_ports
port_accepts = flmproc.port_open
call = flmproc.call


def _start_listener(name: str, argv: list[str], logdir: Path) -> tuple[Child, int]:
    child = Child(name, argv, logdir)
    try:
        return child, int(child.wait_line("listening on"))
    except BaseException:
        child.stop()
        raise


def start_backend(logdir: Path) -> tuple[Child, int]:
    return _start_listener("backend", [PY, "-m", "tests.fakes.fast", "--port", "0"], logdir)


def start_bare_proxy(logdir: Path, backend_port: int) -> tuple[Child, int]:
    return _start_listener("bare_proxy", [PY, "-m", "bench.bare_proxy", "--port", "0",
                                          "--backend", f"http://{HOST}:{backend_port}"], logdir)


class FLM:
    """``twistd -n flm`` on a data dir, with its admin port and token.

    (``python -m twisted`` is ``twist``, which has no ``-n``; ``twistd`` is what users run.)
    """

    def __init__(self, logdir: Path, data_dir: Path, backend_port: int, extra: list[str] | None = None,
                 name: str = "flm", repo: Path | None = None) -> None:
        self.token = os.environ.get("FLM_BENCH_TOKEN") or secrets.token_urlsafe(24)
        self.admin_port = free_ports(1)[0]
        self.data_dir = data_dir
        twistd()  # a clear BenchError when there is none
        argv = flmproc.flm_command(data_dir, self.admin_port, f"http://{HOST}:{backend_port}",
                                   args=["--backend-kind", "openai", *(extra or [])])
        self.argv = argv
        env = flmproc.flm_env(self.token, clean=False)
        repo = repo or (Path(os.environ["FLM_BENCH_REPO"]) if os.environ.get("FLM_BENCH_REPO")
                        else None)
        if repo is not None:  # another checkout of FLM (bench.ab): its code, not this one's
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo),
                                                             os.environ.get("PYTHONPATH")]))
        self.child = Child(name, argv, logdir, env=env, cwd=data_dir)

    @property
    def pid(self) -> int:
        return self.child.pid

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Seconds from process start until ``GET /health`` answers 200."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise BenchError(f"FLM exited ({self.child.proc.returncode}):\n{self.child.tail()}")
            try:
                status, body = call(self.admin_port, "GET", "/health", timeout=2)
                last = (status, body)
                if status == 200:
                    return time.perf_counter() - self.child.started
            except OSError:
                pass
            time.sleep(0.005)
        raise BenchError(f"FLM /health not 200 within {timeout}s (last: {last}):\n{self.child.tail()}")

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return call(self.admin_port, method, path, body, token=self.token)

    def create_api(self, **fields: Any) -> dict[str, Any]:
        status, body = self.admin("POST", "/api/apis", fields)
        if status != 201:
            raise BenchError(f"POST /api/apis {fields.get('name')}: {status} {body}")
        return body

    def open_api(self, **fields: Any) -> dict[str, Any]:
        """Create one API (after FLM is healthy) and wait until its port accepts."""
        self.wait_healthy(timeout=60)
        fields.setdefault("port", free_ports(1)[0])
        api = self.create_api(**fields)
        self.wait_port(api)
        return api

    def wait_port(self, api: dict[str, Any], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not port_accepts(api["port"]):
            if time.monotonic() > deadline:
                raise BenchError(f"API port {api['port']} not accepting; API: {api}\n{self.child.tail()}")
            time.sleep(0.02)

    def stop(self) -> float:
        return self.child.stop()


class Run:
    """One benchmark run: a folder for process logs, and everything ``add``-ed stopped on
    the way out, last first, also on failure. A ``BenchError`` is reported, not raised
    (the code after the ``with`` block runs: return 1 there); logs are kept on failure or
    with ``keep_logs``."""

    def __init__(self, keep_logs: bool = False) -> None:
        self.logdir = temp_dir("flm-bench-logs-")
        self.keep_logs = keep_logs
        self._cleanups: list[Any] = []

    def add(self, proc: Any) -> Any:
        """Stop ``proc`` (a ``Child`` or an ``FLM``, whose data dir also goes) at the end."""
        self._cleanups.append(proc.stop)
        if isinstance(proc, FLM):
            self._cleanups.append(lambda: remove(proc.data_dir))
        return proc

    def remove_later(self, path: Path) -> Path:
        self._cleanups.append(lambda: remove(path))
        return path

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> bool:
        for cleanup in reversed(self._cleanups):
            cleanup()
        failed = isinstance(error, BenchError)
        if failed:
            print(f"\nBENCHMARK FAILED: {error}", file=sys.stderr)
        if self.keep_logs or failed:
            print(f"logs kept in {self.logdir}", file=sys.stderr)
        else:
            remove(self.logdir)
        return failed


def cpu_seconds(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def main_thread_cpu(proc: Any) -> float:
    """CPU seconds of the process's main (reactor) thread alone."""
    for t in proc.threads():
        if t.id == proc.pid:
            return float(t.user_time + t.system_time)
    return float("nan")


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def twistd() -> str:
    """The ``twistd`` next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(PY).parent / "twistd"
    found = str(beside) if beside.exists() else shutil.which("twistd")
    if not found:
        raise BenchError("no twistd found: install Twisted into this interpreter's environment")
    return found


def flm_available() -> str | None:
    """None when ``twistd`` lists the flm plugin, else the reason."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([twistd(), "--help"], capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir(), timeout=60)
    if any(line.strip().startswith("flm ") for line in out.stdout.splitlines()):
        return None
    return ("twistd does not list the flm plugin: install the package "
            "(pip install -e . --config-settings editable_mode=compat) and check flm/tap.py imports")


@contextlib.contextmanager
def postgresql_database(server: str) -> Iterator[tuple[str, str]]:
    """A new database ``flm_bench_<hex>`` on ``server`` (a PostgreSQL URL where databases
    may be created), dropped on the way out: ``(name, url)``."""
    import psycopg
    name = f"flm_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name, urlunsplit(urlsplit(server)._replace(path="/" + name))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
