"""Start-up as a newcomer meets it: daemon mode, a wrong setting, a busy port, a second
instance on the same data dir, ``--uid``/``--gid``. Real ``twistd`` subprocesses only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import DEFAULT_MODEL, Gateway
from tests.fakes.backend import FakeProcess
from tests.flmproc import REPO, free_port, port_open, twistd_command, wait_for

RUN_TIMEOUT = 30


def env(token: str = "admin-startup") -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("FLM_", "OLLAMA_", "OPENAI_"))}
    e["FLM_ADMIN_TOKEN"] = token
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return e


def twistd(*args: str, cwd: Path, token: str = "admin-startup") -> subprocess.CompletedProcess[str]:
    """Run ``twistd ARGS`` to its end (a daemon's parent, or a failing start)."""
    return subprocess.run(twistd_command() + list(args), capture_output=True, text=True,
                          cwd=cwd, env=env(token), timeout=RUN_TIMEOUT)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole output of a failed start: exactly one line."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


class Daemon:
    """``twistd --pidfile --logfile flm ...`` (no ``-n``): started, then stopped by its pid."""

    def __init__(self, tmp: Path, fake: FakeProcess, data_dir: Path | None = None) -> None:
        self.tmp = tmp
        self.pidfile = tmp / "twistd.pid"
        self.logfile = tmp / "twistd.log"
        self.data_dir = data_dir or tmp / "data"
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.admin_port}"
        self.fake = fake
        self.token = f"admin-{uuid.uuid4().hex}"

    def start(self) -> subprocess.CompletedProcess[str]:
        return twistd(f"--pidfile={self.pidfile}", f"--logfile={self.logfile}", "flm",
                      "--data-dir", str(self.data_dir),
                      "--admin", f"tcp:{self.admin_port}:interface=127.0.0.1",
                      "--backend", self.fake.url, cwd=self.tmp, token=self.token)

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"},
                         timeout=5)

    def stop(self) -> None:
        if not self.pidfile.exists():
            return
        pid = self.pid
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not _alive(pid), 15, "the daemon to exit")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive either (the daemon is nobody's child here, so it is reaped).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def daemon(tmp_path: Path, fake: FakeProcess) -> Iterator[Daemon]:
    d = Daemon(tmp_path, fake)
    try:
        yield d
    finally:
        d.stop()


# -- item 1: daemon mode ----------------------------------------------------------------

def test_daemon_mode_serves_health_system_metrics_and_status(daemon: Daemon) -> None:
    result = daemon.start()
    assert result.returncode == 0, result.stdout + result.stderr + daemon.log()
    wait_for(lambda: daemon.pidfile.exists(), 10, "the pid file")
    assert daemon.pid != os.getpid()
    wait_for(lambda: port_open(daemon.admin_port), 10, "the admin port")
    for path in ("/health", "/api/system", "/metrics"):
        response = daemon.get(path)
        assert response.status_code == 200, (path, response.text, daemon.log()[-3000:])
    assert daemon.get("/health").json()["memory"]["rss_bytes"] > 0
    flm = Path(sys.executable).with_name("flm")
    status = subprocess.run([str(flm), "--url", daemon.url, "status"], capture_output=True,
                            text=True, env=env(daemon.token), timeout=RUN_TIMEOUT)
    assert status.returncode == 0, status.stdout + status.stderr
    pid = daemon.pid
    daemon.stop()
    assert not daemon.pidfile.exists()
    assert not _alive(pid)
    assert "Traceback" not in daemon.log(), daemon.log()


# -- item 2: a busy admin endpoint ------------------------------------------------------

def _store_running_api(tmp: Path, fake: FakeProcess) -> tuple[Path, dict]:
    """A data dir whose database holds one API that was running when FLM stopped."""
    gw = Gateway(tmp / "first", fake)
    try:
        gw.start()
        api = gw.create_api()
        gw.stop()
    finally:
        gw.kill()
        gw.http.close()
    return gw.data_dir, api


def _api_status(data_dir: Path, api_id: int) -> str:
    with sqlite3.connect(data_dir / "flm.db") as db:
        return db.execute("SELECT status FROM apis WHERE id = ?", (api_id,)).fetchone()[0]


@pytest.mark.parametrize("daemonize", [False, True], ids=["nodaemon", "daemon"])
def test_busy_admin_port_exits_at_once_having_opened_nothing(
        tmp_path: Path, fake: FakeProcess, busy_port: int, daemonize: bool,
        request: pytest.FixtureRequest) -> None:
    data_dir, api = _store_running_api(tmp_path, fake)
    mode = ["-n", "--pidfile="] if not daemonize else [
        f"--pidfile={tmp_path / 'd.pid'}", f"--logfile={tmp_path / 'd.log'}"]
    request.addfinalizer(lambda: _kill_daemon(tmp_path / "d.pid"))  # should it ever start
    result = twistd(*mode, "flm", "--data-dir", str(data_dir),
                    "--admin", f"tcp:{busy_port}:interface=127.0.0.1", "--backend", fake.url,
                    cwd=tmp_path)
    assert result.returncode != 0
    line = one_line(result)
    assert "admin" in line and str(busy_port) in line, line
    assert not port_open(api["port"])
    assert _api_status(data_dir, api["id"]) == "running"
    log_file = tmp_path / "d.log"
    log = log_file.read_text() if log_file.exists() else ""
    assert "listening on" not in log and "AttributeError" not in log, log


def _kill_daemon(pidfile: Path) -> None:
    """A daemon that started although it should not have must not outlive the test."""
    try:
        os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


# -- item 3: settings checked at start, one line each -----------------------------------

@pytest.mark.parametrize("args, setting", [
    (["--backend", "localhost:11434"], "backend"),
    (["--backend", "ftp://127.0.0.1:11434"], "backend"),
    (["--backend", "http://"], "backend"),
    (["--backend-kind", "llama"], "backend_kind"),
    (["--admin", "tcp:notaport"], "admin"),
    (["--admin", "bogus:8420"], "admin"),
    (["--backend-max-concurrent", "lots"], "backend-max-concurrent"),
    (["--no-such-option"], "no-such-option"),
])
def test_a_wrong_setting_is_one_line_and_non_zero(
        tmp_path: Path, args: list[str], setting: str) -> None:
    result = twistd("-n", "--pidfile=", "flm", "--data-dir", str(tmp_path / "data"), *args,
                    cwd=tmp_path)
    assert result.returncode != 0
    line = one_line(result)
    assert setting in line, line
    assert "attrs" not in line.lower() and "Attribute(" not in line, line
    assert not (tmp_path / "data").exists()


def test_a_wrong_setting_in_the_config_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "flm.toml"
    config.write_text('api_host = "not an address"\n')
    result = twistd("-n", "--pidfile=", "flm", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "api_host" in one_line(result)


# -- item 4: one FLM per data dir -------------------------------------------------------

def test_a_second_flm_on_the_same_data_dir_refuses_and_touches_nothing(
        fresh_gateway: Gateway, tmp_path: Path) -> None:
    gw = fresh_gateway
    api = gw.create_api()
    before = sorted(p.name for p in gw.data_dir.iterdir())
    result = twistd("-n", "--pidfile=", "flm", "--data-dir", str(gw.data_dir),
                    "--admin", f"tcp:{free_port()}:interface=127.0.0.1",
                    "--backend", gw.fake.url, cwd=tmp_path)
    assert result.returncode != 0
    line = one_line(result)
    assert str(gw.proc.pid) in line and str(gw.data_dir) in line, line
    assert gw.admin("GET", f"/api/apis/{api['id']}").json()["status"] == "running"
    assert sorted(p.name for p in gw.data_dir.iterdir()) == before
    assert httpx.get(f"http://127.0.0.1:{api['port']}/v1/models",
                     headers={"Authorization": f"Bearer {api['key']}"}).status_code == 200


def test_the_lock_names_the_daemon_not_its_exited_parent(daemon: Daemon, tmp_path: Path) -> None:
    assert daemon.start().returncode == 0, daemon.log()
    wait_for(lambda: port_open(daemon.admin_port), 10, "the admin port")
    result = twistd("-n", "--pidfile=", "flm", "--data-dir", str(daemon.data_dir),
                    "--admin", f"tcp:{free_port()}:interface=127.0.0.1", cwd=tmp_path)
    assert result.returncode != 0
    assert f"pid {daemon.pid}" in one_line(result)


# -- item 5: --uid/--gid ----------------------------------------------------------------

def _twistd_for_nobody(environ: dict[str, str]) -> list[str] | None:
    """A Python that user nobody can run FLM with (an interpreter under /root cannot import
    its own standard library once twistd has dropped privileges)."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), site])
    for python in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        try:
            usable = python and subprocess.run(
                [python, "-c", "import importlib.readers, twisted, flm"], env=environ,
                cwd="/", user=65534, group=65534, capture_output=True).returncode == 0
        except OSError:
            usable = False
        if usable:
            return [python, "-c", "import sys; from twisted.scripts.twistd import run; "
                                  "sys.exit(run())"]
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_uid_gid_can_open_the_database(fake: FakeProcess) -> None:
    top = Path(tempfile.mkdtemp(prefix="flm-uid-"))
    try:
        top.chmod(0o755)
        data_dir = top / "data"
        admin_port = free_port()
        no_token = {k: v for k, v in env().items() if k != "FLM_ADMIN_TOKEN"}
        command = _twistd_for_nobody(no_token)
        if command is None:
            pytest.skip("no Python here that user nobody can run")
        proc = subprocess.Popen(
            command + ["-n", "--pidfile=", "--uid", "nobody", "--gid", "nogroup",
                                "flm", "--data-dir", str(data_dir),
                                "--admin", f"tcp:{admin_port}:interface=127.0.0.1",
                                "--backend", fake.url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=top, env=no_token)
        try:
            url = f"http://127.0.0.1:{admin_port}"
            wait_for(lambda: proc.poll() is not None or port_open(admin_port), 15, "the admin port")
            assert proc.poll() is None, proc.stdout.read().decode()
            token_file = data_dir / "admin-token"
            auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
            created = httpx.post(url + "/api/apis", headers=auth, timeout=10, json={
                "name": "uid", "model": DEFAULT_MODEL, "port": free_port()})
            assert created.status_code == 201, created.text
            health = httpx.get(url + "/health", timeout=5).json()
            assert health["database"]["writable"] is True, health
            assert token_file.stat().st_uid == 65534  # so `flm` run as nobody can read it
            assert data_dir.stat().st_uid == 65534
            assert (data_dir / "flm.db").stat().st_uid == 65534
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
            proc.stdout.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)
