"""The ``flm`` command against the real admin API (``twistd -n flm``), not canned JSON."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flm import cli
from flm.cli.client import AdminClient
from tests.e2e.conftest import Gateway


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("FLM_URL", "FLM_ADMIN_TOKEN", "FLM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def flm(gw: Gateway, *argv: str) -> int:
    return cli.main(["--url", gw.admin_url, "--token", gw.token, "--timeout", "10", *argv])


def name() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_json_delete_prints_an_object(gateway: Gateway, capsys: Any) -> None:
    api = gateway.create_api(start=False)
    assert flm(gateway, "--json", "apis", "delete", api["name"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": api["name"]}


def test_create_with_host_and_list_shows_it(gateway: Gateway, capsys: Any) -> None:
    api = name()
    assert flm(gateway, "apis", "create", api, "--model", "llama3.2:1b", "--host", "127.0.0.1",
               "--port", str(gateway.unused_port()), "--no-start") == 0
    capsys.readouterr()
    assert flm(gateway, "apis", "list") == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert "HOST" in header
    assert any(api in row and "127.0.0.1" in row for row in rows), out
    assert flm(gateway, "apis", "update", api, "--host", "::1") == 0
    assert gateway.admin("GET", f"/api/apis/{api}").json()["host"] == "::1"


def test_logs_until_is_accepted(gateway: Gateway, capsys: Any) -> None:
    api = gateway.create_api(start=False)
    code = flm(gateway, "--json", "logs", api["name"], "--since", "2024-01-01T00:00:00Z",
               "--until", "2024-01-02T00:00:00Z")
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["items"] == []


def test_status_says_memory_and_dropped_rows_once(gateway: Gateway, capsys: Any) -> None:
    flm(gateway, "status")
    out = capsys.readouterr().out.lower()
    assert out.count("memory") == 1, out
    assert out.count("dropped") == 1, out


def test_update_help_shows_no_create_defaults(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.main(["apis", "update", "--help"])
    out = capsys.readouterr().out
    assert "--max-queue" in out and "(32)" not in out and "8080" not in out, out


def test_plain_http_beyond_loopback_is_refused_before_connecting(capsys: Any) -> None:
    # 192.0.2.1 is TEST-NET-1: refused before any connection is tried
    code = cli.main(["--url", "http://192.0.2.1:8420", "--token", "t", "apis", "list"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--insecure" in err and "https" in err, err
    client = AdminClient("http://192.0.2.1:8420", "t", "--token", 5.0, insecure=True)
    assert client.url == "http://192.0.2.1:8420"


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Recorder.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/api/"):
            self.send_response(307)
            self.send_header("Location", Recorder.target + "/elsewhere" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"items": [], "next_cursor": null, "total": 0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.seen = []
    Recorder.target = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield Recorder.target
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_token_is_never_sent_on_a_redirect(redirector: str, capsys: Any) -> None:
    code = cli.main(["--url", redirector, "--token", "secret", "--timeout", "5", "apis", "list"])
    assert code == 1
    assert [auth for path, auth in Recorder.seen if path.startswith("/elsewhere")] in ([], [None])
    err = capsys.readouterr().err
    assert "redirect" in err, err
