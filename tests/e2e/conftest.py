"""Real-socket fixtures: ``twistd -n flm`` as a subprocess in front of the fake backend
(process plumbing in ``tests/flmproc.py``, shared with the benchmarks).

Everything listens on 127.0.0.1 only and every wait is bounded. One gateway and one fake
serve the whole session (each test creates its own API and resets the fake); tests that
stop or restart the service ask for ``fresh_gateway`` instead.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.backend import FakeProcess
from tests.flmproc import (flm_command, flm_env, free_port, port_open, stop_process,
                           wait_for, write_config)

__all__ = ["Background", "Gateway", "api_url", "free_port", "port_open", "wait_for"]

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
DEFAULT_MODEL = "llama3.2:1b"


class Background:
    """Run ``call`` in a thread; ``result()`` joins (bounded) and returns or re-raises."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = call()
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 15) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "a background request did not finish"
        if self.error is not None:
            raise self.error
        return self.value


class Gateway:
    """One ``twistd -n flm`` process: start, stop, restart, and talk to its admin API."""

    def __init__(
        self, tmp: Path, fake: FakeProcess, token: str | None = None,
        settings: dict[str, Any] | None = None, args: tuple[str, ...] = (),
    ) -> None:
        self.tmp = tmp
        self.settings = settings or {}
        self.args = args
        self.fake = fake
        self.data_dir = tmp / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.token = token or f"admin-{uuid.uuid4().hex}"
        self.admin_port = free_port()
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.stdout_path = tmp / "flm.stdout"
        self.stderr_path = tmp / "flm.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(timeout=10)
        self.keys: list[str] = []
        self.ports: set[int] = set()

    def command(self) -> list[str]:
        config = write_config(self.tmp / "flm.toml", self.settings) if self.settings else None
        return flm_command(self.data_dir, self.admin_port, self.fake.url, config=config,
                           args=self.args)

    def start(self) -> None:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=err, cwd=self.tmp,
                                         env=flm_env(self.token))

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"flm exited with {self.proc.returncode} on start:\n{self.output()[-3000:]}")
            return self.answers_health()

        wait_for(up, START_TIMEOUT, "GET /health to answer", interval=0.1)

    def answers_health(self) -> bool:
        """``/health`` answers at all (a degraded 503 is an answer: FLM is up)."""
        try:
            self.http.get(f"{self.admin_url}/health", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (SIGKILL past ``timeout``); the exit code, None if not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if not stop_process(proc, timeout):
            raise AssertionError(f"flm did not stop within {timeout}s of SIGTERM")
        return proc.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def output(self) -> str:
        text = ""
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    # -- admin API ------------------------------------------------------------------

    def admin(
        self, method: str, path: str, json: Any = None, *, token: str | None = "default",
        content: bytes | None = None, headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One admin request; ``token=None`` sends no Authorization header."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        if content is not None:
            all_headers.setdefault("Content-Type", "application/json")
        return self.http.request(method, self.admin_url + path, json=json, content=content, headers=all_headers)

    def unused_port(self) -> int:
        """A free port no API of this gateway holds: a stopped API keeps its port unbound."""
        port = free_port()
        while port in self.ports:
            port = free_port()
        self.ports.add(port)
        return port

    def create_api(self, **fields: Any) -> dict[str, Any]:
        """Create an API (unique name, free port, the fake's first model); wait for its port."""
        body = {"name": f"api-{uuid.uuid4().hex[:10]}", "model": DEFAULT_MODEL,
                "port": self.unused_port(), **fields}
        response = self.admin("POST", "/api/apis", body)
        assert response.status_code == 201, (response.status_code, response.text)
        api: dict[str, Any] = response.json()
        assert api.get("key"), api
        self.keys.append(api["key"])
        if api.get("status") == "running":
            wait_for(lambda: port_open(api["port"]), 5, f"API port {api['port']} to accept")
        return api


def api_url(api: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{api['port']}"


@pytest.fixture(scope="session")
def fake_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProcess]:
    fake = FakeProcess(str(tmp_path_factory.mktemp("fake") / "fake.log")).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def _session_gateway(tmp_path_factory: pytest.TempPathFactory, fake_backend: FakeProcess) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("flm"), fake_backend)
    try:
        gw.start()
        yield gw
    finally:
        gw.kill()
        gw.http.close()


@pytest.fixture
def fake(fake_backend: FakeProcess) -> FakeProcess:
    """The session's fake, running and reset (restarted on its port if a test stopped it)."""
    if fake_backend.proc is None or fake_backend.proc.poll() is not None:
        fake_backend.start(fake_backend.port)
    fake_backend.reset()
    return fake_backend


@pytest.fixture
def gateway(_session_gateway: Gateway, fake: FakeProcess) -> Gateway:
    """The session's gateway, with a fresh fake behind it."""
    if _session_gateway.proc is None or _session_gateway.proc.poll() is not None:
        _session_gateway.start()
    return _session_gateway


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``make(settings={...}, args=(...))``: a started gateway (and fake) of this test alone."""
    made: list[Gateway] = []

    def make(settings: dict[str, Any] | None = None, args: tuple[str, ...] = ()) -> Gateway:
        tmp = tmp_path / f"gw{len(made)}"
        tmp.mkdir()
        fake = FakeProcess(str(tmp / "fake.log")).start()
        gw = Gateway(tmp, fake, settings=settings, args=args)
        made.append(gw)
        gw.start()
        return gw

    try:
        yield make
    finally:
        for gw in made:
            gw.kill()
            gw.http.close()
            gw.fake.stop()


@pytest.fixture
def fresh_gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A gateway (and fake) of this test alone: free to stop, restart or break."""
    return gateway_factory()
