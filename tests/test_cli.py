"""The ``flm`` command against a fake admin API on a real socket (stdlib only)."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flm import cli, cli_format

TOKEN = "admin-secret"
T0 = "2024-05-01T12:34:56.789Z"


def api_object(n: int, **changes: Any) -> dict[str, Any]:
    api = {
        "id": n, "name": f"api{n}", "host": "127.0.0.1", "port": 8079 + n, "model": "llama3.2:1b",
        "status": "running", "key_prefix": f"flm-k{n}", "created_at": T0, "updated_at": T0,
        "last_used_at": None, "max_concurrent": 1, "max_queue": 32, "queue_timeout_s": 60,
        "upstream_timeout_s": 300, "rate_limit_rpm": None, "priority": 0,
    }  # fmt: skip
    api.update(changes)
    return api


def log_row(n: int, status: int = 200) -> dict[str, Any]:
    return {
        "id": n, "created_at": f"2024-05-01T12:00:{n:02d}Z", "method": "POST",
        "path": "/v1/chat/completions", "status": status, "queue_ms": 3, "ttfb_ms": 120,
        "upstream_ms": 900, "response_ms": 1534, "bytes_in": 100, "bytes_out": 2000,
        "model": "llama3.2:1b", "prompt_tokens": 12, "completion_tokens": 345,
        "request_id": f"r{n}", "error": None if status < 500 else "backend_unavailable",
    }  # fmt: skip


def not_found(what: str) -> tuple[int, dict[str, Any]]:
    return 404, {"error": {"code": "not_found", "message": f"no API named {what!r}"}}


class FakeAdmin:
    """Canned answers keyed by (method, path with query); records every request.

    An answer is ``(status, json)``, ``(status, bytes, content_type)``, or a list of
    answers handed out in turn (the last one repeats).
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {}
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                auth = self.headers.get("Authorization")
                fake.requests.append((self.command, self.path, auth, body))
                answer = fake.routes.get((self.command, self.path))
                if isinstance(answer, list):
                    answer = answer.pop(0) if len(answer) > 1 else answer[0]
                if answer is None:
                    answer = (404, {"error": {"code": "not_found", "message": "no such route"}})
                elif self.path.startswith("/api/") and auth != f"Bearer {TOKEN}":
                    answer = (401, {"error": {"code": "unauthorized", "message": "bad token"}})
                status, payload, *kind = answer
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind[0] if kind else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def paths(self) -> list[str]:
        return [f"{method} {path}" for method, path, _, _ in self.requests]


@pytest.fixture
def admin() -> Iterator[FakeAdmin]:
    fake = FakeAdmin()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    fake.thread.join(5)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("FLM_URL", "FLM_ADMIN_TOKEN", "FLM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def run(admin: FakeAdmin, *argv: str, token: str | None = TOKEN) -> int:
    head = ["--url", admin.url, "--timeout", "5"] + (["--token", token] if token else [])
    return cli.main([*head, *argv])


# -- apis ----------------------------------------------------------------------------


def test_apis_list_follows_cursors_and_prints_a_table(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis?limit=500")] = (
        200, {"items": [api_object(1), api_object(2)], "next_cursor": "c2", "total": 3})
    admin.routes[("GET", "/api/apis?limit=500&cursor=c2")] = (
        200, {"items": [api_object(3, status="stopped", model="qwen")], "next_cursor": None,
              "total": 3})  # fmt: skip

    assert run(admin, "apis", "list") == 0

    assert admin.requests == [
        ("GET", "/api/apis?limit=500", f"Bearer {TOKEN}", None),
        ("GET", "/api/apis?limit=500&cursor=c2", f"Bearer {TOKEN}", None),
    ]
    assert capsys.readouterr().out == (
        "NAME  ID  STATUS   HOST       PORT  MODEL        KEY     LAST USED\n"
        "api1   1  running  127.0.0.1  8080  llama3.2:1b  flm-k1  never\n"
        "api2   2  running  127.0.0.1  8081  llama3.2:1b  flm-k2  never\n"
        "api3   3  stopped  127.0.0.1  8082  qwen         flm-k3  never\n"
    )


def test_apis_list_json_merges_pages_and_limit_stops_early(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis?limit=3&status=running")] = (
        200, {"items": [api_object(1), api_object(2)], "next_cursor": "c2", "total": 9})
    admin.routes[("GET", "/api/apis?limit=1&status=running&cursor=c2")] = (
        200, {"items": [api_object(3)], "next_cursor": "c3", "total": 9})

    assert run(admin, "apis", "list", "--status", "running", "--limit", "3", "--json") == 0

    assert admin.paths() == [
        "GET /api/apis?limit=3&status=running",
        "GET /api/apis?limit=1&status=running&cursor=c2",
    ]
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "items": [api_object(1), api_object(2), api_object(3)], "next_cursor": "c3", "total": 9
    }


def test_apis_list_empty_and_limit_table_footer(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis?limit=500")] = (
        200, {"items": [], "next_cursor": None, "total": 0})
    assert run(admin, "--json", "apis", "list") == 0  # --json before the group works too
    assert json.loads(capsys.readouterr().out)["items"] == []
    assert run(admin, "apis", "list") == 0
    assert capsys.readouterr().out.startswith("No APIs.")


def test_apis_create_sends_given_fields_and_shows_the_key_once(
    admin: FakeAdmin, capsys: Any
) -> None:
    created = {**api_object(1, name="chat", port=9000, status="stopped"), "key": "flm-SECRET"}
    admin.routes[("POST", "/api/apis")] = (201, created)

    code = run(admin, "apis", "create", "chat", "--model", "llama3.2:1b", "--port", "9000",
               "--queue-timeout", "2.5", "--upstream-timeout", "120", "--rate-limit-rpm", "60",
               "--priority", "5", "--max-concurrent", "2", "--max-queue", "0", "--no-start",
               "--allow-unknown-model")  # fmt: skip

    assert code == 0
    assert admin.requests == [("POST", "/api/apis", f"Bearer {TOKEN}", {
        "name": "chat", "model": "llama3.2:1b", "port": 9000, "max_concurrent": 2,
        "max_queue": 0, "queue_timeout_s": 2.5, "upstream_timeout_s": 120,
        "rate_limit_rpm": 60, "priority": 5, "allow_unknown_model": True, "start": False,
    })]  # fmt: skip
    out = capsys.readouterr().out
    assert out == (
        "Created API chat (id 1), stopped (port 9000). Its key:\n\n"
        "    flm-SECRET\n\n"
        "This key will not be shown again: store it now.\n"
    )


def test_apis_create_minimal_body_and_json(admin: FakeAdmin, capsys: Any) -> None:
    created = {**api_object(1, name="chat"), "key": "flm-SECRET"}
    admin.routes[("POST", "/api/apis")] = (201, created)
    assert run(admin, "apis", "create", "chat", "--model", "m", "--json") == 0
    assert admin.requests[0][3] == {"name": "chat", "model": "m"}
    assert json.loads(capsys.readouterr().out) == created


def test_apis_create_usage_errors_exit_2(admin: FakeAdmin) -> None:
    with pytest.raises(SystemExit) as missing_model:
        run(admin, "apis", "create", "chat")
    with pytest.raises(SystemExit) as bad_port:
        run(admin, "apis", "create", "chat", "--model", "m", "--port", "x")
    with pytest.raises(SystemExit) as bad_timeout:
        run(admin, "apis", "create", "chat", "--model", "m", "--queue-timeout", "nan")
    assert missing_model.value.code == bad_port.value.code == bad_timeout.value.code == 2
    assert admin.requests == []


def test_apis_update_patches_only_given_fields(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("PATCH", "/api/apis/my%20api%2Fx")] = (
        200, api_object(4, name="renamed", rate_limit_rpm=None, max_queue=8))

    assert run(admin, "apis", "update", "my api/x", "--name", "renamed", "--max-queue", "8",
               "--rate-limit-rpm", "none") == 0  # fmt: skip

    assert admin.requests == [("PATCH", "/api/apis/my%20api%2Fx", f"Bearer {TOKEN}",
                               {"name": "renamed", "max_queue": 8, "rate_limit_rpm": None})]
    out = capsys.readouterr().out
    assert "name              renamed\n" in out
    assert "rate limit        none\n" in out
    assert "queue timeout     60 s\n" in out


def test_apis_update_without_fields_is_a_usage_error(admin: FakeAdmin, capsys: Any) -> None:
    assert run(admin, "apis", "update", "chat") == 2
    assert admin.requests == []
    assert capsys.readouterr().err.startswith("flm: error: apis update: give at least one")


def test_apis_show_prints_fields_and_hides_nothing_unknown(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis/7")] = (
        200, api_object(7, last_used_at="2024-05-02T01:02:03+00:00", host="127.0.0.1"))
    assert run(admin, "apis", "show", "7") == 0
    assert capsys.readouterr().out == (
        "name              api7\n"
        "id                7\n"
        "status            running\n"
        "host              127.0.0.1\n"
        "port              8086\n"
        "model             llama3.2:1b\n"
        "key prefix        flm-k7\n"
        "max concurrent    1\n"
        "max queue         32\n"
        "queue timeout     60 s\n"
        "upstream timeout  300 s\n"
        "rate limit        none\n"
        "priority          0\n"
        "created           2024-05-01 12:34:56\n"
        "updated           2024-05-01 12:34:56\n"
        "last used         2024-05-02 01:02:03\n"
    )


def test_http_error_is_one_line_on_stderr(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis/nope")] = not_found("nope")
    assert run(admin, "apis", "show", "nope") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "flm: error: no API named 'nope'\n"


def test_error_without_json_body_names_the_status(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis/x")] = (502, b"<html>bad gateway</html>", "text/html")
    assert run(admin, "apis", "show", "x") == 1
    assert capsys.readouterr().err == "flm: error: HTTP 502 Bad Gateway\n"


def test_401_says_where_the_token_came_from(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis/x")] = (200, api_object(1))
    assert run(admin, "apis", "show", "x", token="wrong") == 1
    assert capsys.readouterr().err == (
        "flm: error: bad token (the admin token from --token was refused)\n")
    assert run(admin, "--data-dir", "/nonexistent", "apis", "show", "x", token=None) == 1
    assert capsys.readouterr().err == (
        "flm: error: bad token (no admin token: use --token, $FLM_ADMIN_TOKEN or "
        "/nonexistent/admin-token)\n")
    assert admin.requests[-1][2] is None


def test_token_from_env_then_data_dir(
    admin: FakeAdmin, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    admin.routes[("GET", "/api/apis/x")] = (200, api_object(1))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin-token").write_text("from-file\n")
    monkeypatch.setenv("FLM_DATA_DIR", str(tmp_path / "data"))
    run(admin, "apis", "show", "x", token=None)
    monkeypatch.setenv("FLM_ADMIN_TOKEN", "from-env")
    run(admin, "apis", "show", "x", token=None)
    run(admin, "apis", "show", "x", token="from-flag")
    home = tmp_path / ".local" / "share" / "flm"
    home.mkdir(parents=True)
    (home / "admin-token").write_text("from-home")
    monkeypatch.delenv("FLM_ADMIN_TOKEN")
    monkeypatch.delenv("FLM_DATA_DIR")
    run(admin, "apis", "show", "x", token=None)
    assert [auth for _, _, auth, _ in admin.requests] == [
        "Bearer from-file", "Bearer from-env", "Bearer from-flag", "Bearer from-home"]


def test_url_from_env(admin: FakeAdmin, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis/x")] = (200, api_object(1))
    monkeypatch.setenv("FLM_URL", admin.url)
    monkeypatch.setenv("FLM_ADMIN_TOKEN", TOKEN)
    assert cli.main(["apis", "show", "x", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == 1


def test_connection_refused_is_one_line(capsys: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening
        assert cli.main(["--url", url, "--timeout", "5", "apis", "list"]) == 1
    assert capsys.readouterr().err == f"flm: error: cannot reach {url}: connection refused\n"


@pytest.mark.parametrize(
    ("argv", "method", "path", "answer", "out"),
    [
        (["delete", "chat"], "DELETE", "/api/apis/chat", (204, b""), "Deleted API chat.\n"),
        (["start", "chat"], "POST", "/api/apis/chat/start", (200, api_object(1, name="chat")),
         "API chat is running on port 8080.\n"),
        (["stop", "5"], "POST", "/api/apis/5/stop",
         (200, api_object(5, status="stopped")), "API api5 is stopped.\n"),
        (["rotate-key", "chat"], "POST", "/api/apis/chat/rotate-key",
         (200, {**api_object(1, name="chat"), "key": "flm-NEW"}),
         "New key for API chat (the old one no longer works):\n\n    flm-NEW\n\n"
         "This key will not be shown again: store it now.\n"),
    ],
)  # fmt: skip
def test_simple_api_commands(
    admin: FakeAdmin, capsys: Any, argv: list[str], method: str, path: str, answer: Any, out: str
) -> None:
    admin.routes[(method, path)] = answer
    assert run(admin, "apis", *argv) == 0
    assert admin.requests == [(method, path, f"Bearer {TOKEN}", None)]
    assert capsys.readouterr().out == out


# -- status, logs, metrics -----------------------------------------------------------


def test_status_summarises_health_and_system(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/health")] = (503, {
        "status": "degraded", "backend": {"reachable": False},
        "memory": {"rss_bytes": 50 * 2**20, "limit_bytes": 2**30}})
    admin.routes[("GET", "/api/system")] = (200, {
        "rss_bytes": 50 * 2**20, "cpu_percent": 3.25, "uptime_s": 3700, "open_connections": 4,
        "apis": [{"name": "chat", "queue_depth": 2, "in_flight": 1}]})  # fmt: skip

    assert run(admin, "status") == 1  # degraded

    assert admin.requests[0] == ("GET", "/health", None, None)  # no token off /api/
    assert admin.requests[1] == ("GET", "/api/system", f"Bearer {TOKEN}", None)
    assert capsys.readouterr().out == (
        f"FLM at {admin.url}: degraded\n"
        "backend  UNREACHABLE\n"
        "memory   50.0 MiB (limit 1.0 GiB)\n"
        "cpu               3.2%\n"
        "uptime            1h01m\n"
        "open connections  4\n"
        "apis:\n"
        "  NAME  QUEUE_DEPTH  IN_FLIGHT\n"
        "  chat            2          1\n"
    )
    assert run(admin, "status", "--json") == 1
    assert set(json.loads(capsys.readouterr().out)) == {"health", "system"}


def test_logs_prints_oldest_first_with_query(admin: FakeAdmin, capsys: Any) -> None:
    path = "/api/apis/chat/logs?limit=2&status=5xx&since=2024-05-01T00%3A00%3A00Z"
    admin.routes[("GET", path)] = (200, {"items": [log_row(3, 502), log_row(2, 500)],
                                         "next_cursor": "x"})  # fmt: skip
    assert run(admin, "logs", "chat", "--limit", "2", "--status", "5xx",
               "--since", "2024-05-01T00:00:00Z") == 0  # fmt: skip
    assert admin.paths() == [f"GET {path}"]
    assert capsys.readouterr().out == (
        "TIME                 STATUS  METHOD  PATH                            TOTAL     TTFB"
        "    QUEUE       TOKENS  ERROR\n"
        "2024-05-01 12:00:02     500  POST    /v1/chat/completions            1.53s    120ms"
        "      3ms       12/345  backend_unavailable\n"
        "2024-05-01 12:00:03     502  POST    /v1/chat/completions            1.53s    120ms"
        "      3ms       12/345  backend_unavailable\n"
    )


def test_logs_follow_prints_only_new_rows_until_ctrl_c(
    admin: FakeAdmin, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.routes[("GET", "/api/apis/chat/logs")] = (
        200, {"items": [log_row(2), log_row(1)], "next_cursor": "c"})
    admin.routes[("GET", "/api/apis/chat/logs?limit=100")] = [
        (200, {"items": [log_row(2), log_row(1)], "next_cursor": "c"}),  # nothing new
        (200, {"items": [log_row(5), log_row(4)], "next_cursor": "p2"}),  # all new: next page
    ]
    admin.routes[("GET", "/api/apis/chat/logs?limit=100&cursor=p2")] = (
        200, {"items": [log_row(3), log_row(2)], "next_cursor": "p3"})
    sleeps = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "sleep", fake_sleep)
    assert run(admin, "logs", "chat", "--follow", "--json") == 130  # Ctrl-C, as documented
    assert sleeps == [1, 1, 1]
    assert admin.paths() == [
        "GET /api/apis/chat/logs",
        "GET /api/apis/chat/logs?limit=100",
        "GET /api/apis/chat/logs?limit=100",
        "GET /api/apis/chat/logs?limit=100&cursor=p2",
    ]
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == [1, 2, 3, 4, 5]
    assert captured.err == ""


def test_metrics_table(admin: FakeAdmin, capsys: Any) -> None:
    path = "/api/apis/chat/metrics?since=2024-05-01T00%3A00%3A00Z"
    admin.routes[("GET", path)] = (200, {"bucket_s": 60, "buckets": [
        {"start": "2024-05-01T12:00:00Z", "request_count": 10, "error_rate": 0.1,
         "avg_response_ms": 250.0, "p95_response_ms": 1200, "p95_ttfb_ms": 80,
         "prompt_tokens": 1000, "completion_tokens": 20000}]})  # fmt: skip
    assert run(admin, "metrics", "chat", "--since", "2024-05-01T00:00:00Z") == 0
    assert admin.paths() == [f"GET {path}"]
    assert capsys.readouterr().out == (
        "One row per 1m00s with requests.\n"
        "START (UTC)       REQUESTS  ERRORS    AVG    P95  P95 TTFB  PROMPT TOK  COMPL TOK\n"
        "2024-05-01 12:00        10   10.0%  250ms  1.20s      80ms        1000      20000\n"
    )


# -- models --------------------------------------------------------------------------


def test_models_list_says_when_stale(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/models")] = (200, {"stale": True, "fetched_at": T0, "models": [
        {"name": "llama3.2:1b", "size": 1321098329, "modified_at": T0,
         "details": {"parameter_size": "1.2B", "quantization_level": "Q8_0"}},
        {"name": "nomic-embed-text:latest"}]})  # fmt: skip
    assert run(admin, "models", "list") == 0
    assert capsys.readouterr().out == (
        "NAME                        SIZE  PARAMS  QUANT  MODIFIED\n"
        "llama3.2:1b              1.2 GiB    1.2B  Q8_0   2024-05-01 12:34\n"
        "nomic-embed-text:latest        -       -  -      -\n"
        "Stale: the backend cannot be reached; this list was fetched at "
        "2024-05-01 12:34:56 UTC.\n"
    )


def test_models_rm_quotes_the_name_and_passes_force(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("DELETE", "/api/models/org%2Fm%3A7b")] = (
        409, {"error": {"code": "model_in_use", "message": "model org/m:7b is used by API api1"}})
    admin.routes[("DELETE", "/api/models/org%2Fm%3A7b?force=true")] = (200, {})
    admin.routes[("DELETE", "/api/models/other")] = (200, {})

    assert run(admin, "models", "rm", "org/m:7b") == 1
    assert capsys.readouterr().err == "flm: error: model org/m:7b is used by API api1\n"
    assert run(admin, "models", "rm", "org/m:7b", "--force") == 0
    assert run(admin, "models", "rm", "other") == 0
    assert admin.paths() == [
        "DELETE /api/models/org%2Fm%3A7b",
        "DELETE /api/models/org%2Fm%3A7b?force=true",
        "DELETE /api/models/other",
    ]
    assert capsys.readouterr().out == "Deleted model org/m:7b.\nDeleted model other.\n"


def sse(*events: dict[str, Any]) -> tuple[int, bytes, str]:
    lines = [": keep-alive\n\n"]
    lines += [f"event: progress\ndata: {json.dumps(e)}\n\n" for e in events]
    return 200, "".join(lines).encode(), "text/event-stream"


def pull_state(status: str, completed: int, total: int, **more: Any) -> dict[str, Any]:
    percent = 100 * completed / total if total else 0
    return {"name": "llama3.2:1b", "status": status, "completed": completed, "total": total,
            "percent": percent, "error": None, **more}  # fmt: skip


def test_models_pull_plain_progress_lines(admin: FakeAdmin, capsys: Any) -> None:
    gib = 2**30
    admin.routes[("POST", "/api/models/pull")] = (202, {"job": "j1"})
    admin.routes[("GET", "/api/models/pulls/j1/events")] = sse(
        pull_state("running", 0, 0, status_line="pulling manifest"),
        pull_state("running", 0, gib, status_line="pulling abc"),
        pull_state("running", gib // 20, gib, status_line="pulling abc"),  # 5%: no line
        pull_state("running", gib // 4, gib, status_line="pulling abc"),
        pull_state("running", gib // 4 + 1, gib, status_line="pulling abc"),  # same decile
        pull_state("running", gib, gib, status_line="pulling abc"),
        pull_state("running", gib, gib, status_line="verifying sha256 digest"),
        pull_state("done", gib, gib, status_line="success"),
    )
    assert run(admin, "models", "pull", "llama3.2:1b") == 0
    assert admin.requests[0] == ("POST", "/api/models/pull", f"Bearer {TOKEN}",
                                 {"name": "llama3.2:1b"})  # fmt: skip
    assert admin.requests[1][:3] == ("GET", "/api/models/pulls/j1/events", f"Bearer {TOKEN}")
    assert capsys.readouterr().out == (
        "pulling manifest\n"
        "pulling abc: 0% (0 B / 1.0 GiB)\n"
        "pulling abc: 25% (256.0 MiB / 1.0 GiB)\n"
        "pulling abc: 100% (1.0 GiB / 1.0 GiB)\n"
        "verifying sha256 digest: 100% (1.0 GiB / 1.0 GiB)\n"
        "success: 100% (1.0 GiB / 1.0 GiB)\n"
        "Pulled llama3.2:1b.\n"
    )


def test_models_pull_error_exits_non_zero(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("POST", "/api/models/pull")] = (202, {"job": 7})
    admin.routes[("GET", "/api/models/pulls/7/events")] = sse(
        pull_state("running", 0, 0),
        {**pull_state("error", 0, 0), "error": "pull model manifest: file does not exist"},
    )
    assert run(admin, "models", "pull", "nope") == 1
    captured = capsys.readouterr()
    assert captured.out == "pulling llama3.2:1b\n"
    assert captured.err == (
        "flm: error: pull of nope failed: pull model manifest: file does not exist\n")


def test_models_pull_json_and_polling_when_the_stream_ends_early(
    admin: FakeAdmin, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "sleep", lambda s: None)
    admin.routes[("POST", "/api/models/pull")] = (202, {"job": "j2"})
    admin.routes[("GET", "/api/models/pulls/j2/events")] = sse(pull_state("running", 1, 4))
    admin.routes[("GET", "/api/models/pulls/j2")] = [
        (200, pull_state("running", 2, 4)), (200, pull_state("done", 4, 4))]
    assert run(admin, "models", "pull", "m", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["completed"] for line in lines] == [1, 2, 4]


def test_models_pull_ctrl_c_stops_watching_quietly(
    admin: FakeAdmin, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: cli.AdminClient, path: str) -> Iterator[dict[str, Any]]:
        yield pull_state("running", 1, 4)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.AdminClient, "events", interrupted)
    admin.routes[("POST", "/api/models/pull")] = (202, {"job": "j3"})
    assert run(admin, "models", "pull", "m") == 130
    captured = capsys.readouterr()
    assert captured.out == "pulling llama3.2:1b: 25% (1 B / 4 B)\n"
    assert captured.err == (
        "flm: stopped watching; the pull goes on in the background (job j3)\n")


def test_models_pull_not_supported(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("POST", "/api/models/pull")] = (
        501, {"error": {"code": "not_supported", "message": "the openai backend cannot pull"}})
    assert run(admin, "models", "pull", "m") == 1
    assert capsys.readouterr().err == "flm: error: the openai backend cannot pull\n"


# -- rendering -------------------------------------------------------------------------


def test_render_progress_for_a_terminal() -> None:
    state = pull_state("running", 2**29, 2**30, status_line="pulling abc",
                       speed_bps=12.5 * 2**20, eta_s=41)  # fmt: skip
    line = cli_format.render_progress(state, width=120)
    assert line == (
        "pulling abc  [####################--------------------]   50%  "
        "512.0 MiB / 1.0 GiB  12.5 MiB/s  ETA 41s"
    )
    assert cli_format.render_progress(state, width=100).startswith(
        "pulling abc  [" + "#" * 14 + "-" * 13 + "]   50%")
    slower = {**state, "speed_bps": 1.5 * 2**20, "eta_s": 4000}  # the bar does not move
    assert cli_format.render_progress(slower, width=100).startswith(
        "pulling abc  [" + "#" * 14 + "-" * 13 + "]   50%")
    narrow = cli_format.render_progress(state, width=60)
    assert len(narrow) <= 59 and narrow.startswith("pulling abc  [#####-----]   50%")
    assert cli_format.render_progress({"status_line": "pulling manifest"}) == "pulling manifest"


def test_tty_progress_redraws_one_line() -> None:
    stream = io.StringIO()
    view = cli_format.TtyProgress(stream, width=60)
    view.update(pull_state("running", 1, 4, status_line="pulling abc"))
    view.update(pull_state("running", 4, 4, status_line="pulling abc"))
    view.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\x1b[K\n") and text.count("\n") == 1
    assert " 25%" in text and "100%" in text


def test_rate_meter_fills_speed_and_eta() -> None:
    now = [100.0]
    meter = cli_format.RateMeter(clock=lambda: now[0])
    assert "speed_bps" not in meter.fill(pull_state("running", 0, 1000))
    now[0] = 102.0
    state = meter.fill(pull_state("running", 400, 1000))
    assert state["speed_bps"] == 200 and state["eta_s"] == 3


def test_small_formatters() -> None:
    assert cli_format.short_time("2024-05-01T12:34:56.789+02:00") == "2024-05-01 10:34:56"
    assert cli_format.short_time(None) == "-"
    assert cli_format.short_time("yesterday") == "yesterday"
    assert [cli_format.human_bytes(n) for n in (0, 1023, 1536, 5 * 2**40)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 TiB"]
    assert [cli_format.human_duration(s) for s in (5, 75, 7300, 200000)] == [
        "5s", "1m15s", "2h01m", "2d07h"]
    assert cli_format.table(["A", "NUM"], [["x", 1], ["long", 100]]) == (
        "A     NUM\nx       1\nlong  100")


def test_no_group_is_a_usage_error(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["models"])
    assert exc.value.code == 2
