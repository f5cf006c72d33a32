"""An API port at ``max_connections`` stops accepting; clients wait, they are not closed."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any, Callable

from tests.e2e.conftest import Gateway

CAP = 3


def _get_models(sock: socket.socket, key: str) -> None:
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\n\r\n")


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection was closed"
        data += chunk
    return data


def test_at_the_cap_clients_wait_in_the_backlog_and_are_served_later(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(settings={"max_connections": CAP})
    api = gw.create_api()
    held = []
    for _ in range(CAP):  # keep-alive connections that stay open
        s = socket.create_connection(("127.0.0.1", api["port"]), timeout=5)
        _get_models(s, api["key"])
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        held.append(s)
    waiting = socket.create_connection(("127.0.0.1", api["port"]), timeout=5)  # the backlog
    _get_models(waiting, api["key"])
    waiting.settimeout(0.5)
    try:
        early = waiting.recv(1)
    except socket.timeout:
        early = None
    assert early is None, f"a connection over the cap was answered or closed: {early!r}"
    held.pop().close()  # room for one: the port accepts again
    waiting.settimeout(5)
    assert _read_response(waiting).startswith(b"HTTP/1.1 200")
    for s in held + [waiting]:
        s.close()


def test_the_open_file_limit_is_raised_or_said(tmp_path: Any) -> None:
    """Start-up raises the soft limit up to the hard one, and says so in one line when
    even the hard limit cannot hold the caps."""
    script = (
        "import resource\n"
        "from flm.startup import raise_open_files\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))\n"
        "assert raise_open_files(1000) is None\n"
        "assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1000, 1024)\n"
        "warning = raise_open_files(9000)\n"
        "assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1024, 1024)\n"
        "assert warning.startswith('max_connections: the open-file limit is 1024') and '\\n' not in warning, warning\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "ok", out.stderr
