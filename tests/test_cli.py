"""The ``flm`` command's text, from canned admin API answers.

What each command sends and reads is tested against the real admin app in
``tests/e2e/test_cli_commands.py``; here only formatting, and the client's answers to
what a reverse proxy in front of FLM may do (an HTML error page, an event stream cut
short), which the real app never does. Canned pull states have the server's shape
(``PullJob.state()``); the e2e tests check that they still do.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flm.cli import format as fmt
from flm.cli import main, models, progress, views

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
        "node": "gpu-a:8420",
    }  # fmt: skip


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
    return main([*head, *argv])


# -- the admin API's objects as text -------------------------------------------------


def test_api_list_table_and_footer() -> None:
    page = {"items": [api_object(1), api_object(2, host="::1"),
                      api_object(3, status="stopped", model="qwen")], "total": 5}
    assert views.api_list(page) == (
        "NAME  ID  STATUS   HOST       PORT  MODEL        KEY     LAST USED\n"
        "api1   1  running  127.0.0.1  8080  llama3.2:1b  flm-k1  never\n"
        "api2   2  running  [::1]      8081  llama3.2:1b  flm-k2  never\n"
        "api3   3  stopped  127.0.0.1  8082  qwen         flm-k3  never\n"
        "(3 of 5 APIs)"
    )
    assert views.api_list({"items": [], "total": 0}).startswith("No APIs.")


def test_api_created_and_rotated_show_the_key_once() -> None:
    created = {**api_object(1, name="chat", port=9000, status="stopped"), "key": "flm-SECRET"}
    assert views.api_created(created) == (
        "Created API chat (id 1), stopped (port 9000). Its key:\n\n"
        "    flm-SECRET\n\n"
        "This key will not be shown again: store it now."
    )
    assert views.api_key_rotated({**api_object(1, name="chat"), "key": "flm-NEW"}) == (
        "New key for API chat (the old one no longer works):\n\n    flm-NEW\n\n"
        "This key will not be shown again: store it now."
    )
    assert views.api_state(api_object(1, name="chat"), "-") == "API chat is running on port 8080."
    assert views.api_state(api_object(5, status="stopped"), "-") == "API api5 is stopped."
    assert views.api_state(None, "API x: stop done.") == "API x: stop done."


def test_api_details_list_every_field_but_the_key() -> None:
    api = {**api_object(7, last_used_at="2024-05-02T01:02:03+00:00", rate_limit_rpm=60),
           "key": "flm-SECRET", "status_reason": None}  # fmt: skip
    assert views.api_details(api) == (
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
        "rate limit        60/min\n"
        "priority          0\n"
        "created           2024-05-01 12:34:56\n"
        "updated           2024-05-01 12:34:56\n"
        "last used         2024-05-02 01:02:03\n"
        "status reason     -"
    )


def test_status_summarises_health_and_system() -> None:
    health = {"status": "degraded", "backend": {"reachable": False},
              "memory": {"rss_bytes": 50 * 2**20, "limit_bytes": 2**30}}
    system = {"rss_bytes": 50 * 2**20, "cpu_percent": 3.25, "uptime_s": 3700,
              "open_connections": 4, "dropped_log_rows": 0,
              "apis": [{"name": "chat", "queue_depth": 2, "in_flight": 1}]}  # fmt: skip
    assert views.status_text("http://x", health, system) == (
        "FLM at http://x: degraded\n"
        "backend  UNREACHABLE\n"
        "memory   50.0 MiB (limit 1.0 GiB)\n"
        "cpu               3.2%\n"
        "uptime            1h01m\n"
        "open connections  4\n"
        "apis:\n"
        "  NAME  QUEUE_DEPTH  IN_FLIGHT\n"
        "  chat            2          1"
    )


def test_log_lines() -> None:
    assert views.log_header() + "\n" + views.log_line(log_row(2, 500)) == (
        "TIME                 STATUS  METHOD  PATH                            TOTAL     TTFB"
        "    QUEUE       TOKENS  NODE              ERROR\n"
        "2024-05-01 12:00:02     500  POST    /v1/chat/completions            1.53s    120ms"
        "      3ms       12/345  gpu-a:8420        backend_unavailable"
    )


def test_nodes_table() -> None:
    page = {"items": [
        {"name": "gpu-a:8420", "status": "up", "started_at": "2024-05-01T12:00:00.000Z",
         "last_seen": "2024-05-01T12:05:00.000Z", "apis": ["chat", "code"]},
        {"name": "gpu-b:8420", "status": "gone", "started_at": "2024-05-01T11:00:00.000Z",
         "last_seen": "2024-05-01T11:30:00.000Z", "apis": []}]}  # fmt: skip
    assert views.nodes_table(page) == (
        "NAME        STATUS  STARTED              LAST SEEN            APIS\n"
        "gpu-a:8420  up      2024-05-01 12:00:00  2024-05-01 12:05:00  chat, code\n"
        "gpu-b:8420  gone    2024-05-01 11:00:00  2024-05-01 11:30:00  -"
    )
    assert views.nodes_table({"items": []}) == "No nodes."


def test_metrics_table() -> None:
    data = {"bucket_s": 60, "buckets": [
        {"start": "2024-05-01T12:00:00Z", "request_count": 10, "error_rate": 0.1,
         "avg_response_ms": 250.0, "p95_response_ms": 1200, "p95_ttfb_ms": 80,
         "prompt_tokens": 1000, "completion_tokens": 20000}]}  # fmt: skip
    assert views.metrics_table(data) == (
        "One row per 1m00s with requests.\n"
        "START (UTC)       REQUESTS  ERRORS    AVG    P95  P95 TTFB  PROMPT TOK  COMPL TOK\n"
        "2024-05-01 12:00        10   10.0%  250ms  1.20s      80ms        1000      20000"
    )
    assert views.metrics_table({"bucket_s": 60, "buckets": []}) == "No requests in this range."


def test_models_list_says_when_stale() -> None:
    data = {"stale": True, "fetched_at": T0, "models": [
        {"name": "llama3.2:1b", "size": 1321098329, "modified_at": T0,
         "details": {"parameter_size": "1.2B", "quantization_level": "Q8_0"}},
        {"name": "nomic-embed-text:latest"}]}  # fmt: skip
    assert views.models_table(data) == (
        "NAME                        SIZE  PARAMS  QUANT  MODIFIED\n"
        "llama3.2:1b              1.2 GiB    1.2B  Q8_0   2024-05-01 12:34\n"
        "nomic-embed-text:latest        -       -  -      -\n"
        "Stale: the backend cannot be reached; this list was fetched at "
        "2024-05-01 12:34:56 UTC."
    )


# -- pull progress -----------------------------------------------------------------------


def pull_state(status: str, completed: int, total: int, **more: Any) -> dict[str, Any]:
    """A pull job's state as the admin API sends it (``PullJob.state()``)."""
    percent = 100.0 if status == "done" else round(100 * completed / total, 1) if total else 0.0
    return {"job": "j1", "name": "llama3.2:1b", "status": status, "completed": completed,
            "total": total, "percent": percent, "status_line": "starting", "speed_bps": None,
            "eta_s": None, "error": None, "started_at": T0,
            "finished_at": None if status == "running" else T0, **more}  # fmt: skip


def test_plain_progress_lines() -> None:
    gib = 2**30
    stream = io.StringIO()
    view = progress.LineProgress(stream)
    for state in [
        pull_state("running", 0, 0, status_line="pulling manifest"),
        pull_state("running", 0, gib, status_line="pulling abc"),
        pull_state("running", gib // 20, gib, status_line="pulling abc"),  # 5%: no line
        pull_state("running", gib // 4, gib, status_line="pulling abc", speed_bps=2**20),
        pull_state("running", gib // 4 + 1, gib, status_line="pulling abc"),  # same decile
        pull_state("running", gib, gib, status_line="pulling abc"),
        pull_state("running", gib, gib, status_line="verifying sha256 digest"),
        pull_state("done", gib, gib, status_line="success"),
    ]:
        view.update(state)
    assert stream.getvalue() == (
        "pulling manifest\n"
        "pulling abc: 0% (0 B / 1.0 GiB)\n"
        "pulling abc: 25% (256.0 MiB / 1.0 GiB)\n"
        "pulling abc: 100% (1.0 GiB / 1.0 GiB)\n"
        "verifying sha256 digest: 100% (1.0 GiB / 1.0 GiB)\n"
        "success: 100% (1.0 GiB / 1.0 GiB)\n"
    )


def test_render_progress_for_a_terminal() -> None:
    state = pull_state("running", 2**29, 2**30, status_line="pulling abc",
                       speed_bps=12.5 * 2**20, eta_s=41)  # fmt: skip
    line = progress.render_progress(state, width=120)
    assert line == (
        "pulling abc  [####################--------------------]   50%  "
        "512.0 MiB / 1.0 GiB  12.5 MiB/s  ETA 41s"
    )
    assert progress.render_progress(state, width=100).startswith(
        "pulling abc  [" + "#" * 14 + "-" * 13 + "]   50%")
    slower = {**state, "speed_bps": 1.5 * 2**20, "eta_s": 4000}  # the bar does not move
    assert progress.render_progress(slower, width=100).startswith(
        "pulling abc  [" + "#" * 14 + "-" * 13 + "]   50%")
    narrow = progress.render_progress(state, width=60)
    assert len(narrow) <= 59 and narrow.startswith("pulling abc  [#####-----]   50%")
    # Before the server has measured a second of download: no speed, no ETA.
    unmeasured = progress.render_progress({**state, "speed_bps": None, "eta_s": None}, 120)
    assert unmeasured.endswith("]   50%  512.0 MiB / 1.0 GiB"), unmeasured
    assert progress.render_progress(pull_state("running", 0, 0, status_line="pulling manifest")
                                    ) == "pulling manifest"  # fmt: skip


def test_tty_progress_redraws_one_line() -> None:
    stream = io.StringIO()
    view = progress.TtyProgress(stream, width=60)
    view.update(pull_state("running", 1, 4, status_line="pulling abc"))
    view.update(pull_state("running", 4, 4, status_line="pulling abc"))
    view.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\x1b[K\n") and text.count("\n") == 1
    assert " 25%" in text and "100%" in text


# -- command lines refused before any request ---------------------------------------------


def test_usage_errors_send_nothing(admin: FakeAdmin, capsys: Any) -> None:
    for argv in (["apis", "create", "chat"], ["apis", "create", "chat", "--model", "m",
                 "--port", "x"], ["apis", "create", "chat", "--model", "m", "--queue-timeout",
                 "nan"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            run(admin, *argv)
        assert exc.value.code == 2
    assert run(admin, "apis", "update", "chat") == 2
    assert capsys.readouterr().err.endswith(
        "flm: error: apis update: give at least one field to change, e.g. --model M\n")
    assert admin.requests == []


# -- what a reverse proxy in front of FLM may do ---------------------------------------------


def test_error_without_json_body_names_the_status(admin: FakeAdmin, capsys: Any) -> None:
    admin.routes[("GET", "/api/apis/x")] = (502, b"<html>bad gateway</html>", "text/html")
    assert run(admin, "apis", "show", "x") == 1
    assert capsys.readouterr().err == "flm: error: HTTP 502 Bad Gateway\n"


def sse(*events: dict[str, Any]) -> tuple[int, bytes, str]:
    lines = [": ping\n\n"]
    lines += [f"data: {json.dumps(e)}\n\n" for e in events]
    return 200, "".join(lines).encode(), "text/event-stream"


def test_pull_polls_when_the_event_stream_ends_early(
    admin: FakeAdmin, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "sleep", lambda s: None)
    admin.routes[("POST", "/api/models/pull")] = (202, pull_state("running", 0, 0, job="j2"))
    admin.routes[("GET", "/api/models/pulls/j2/events")] = sse(pull_state("running", 1, 4))
    admin.routes[("GET", "/api/models/pulls/j2")] = [
        (200, pull_state("running", 2, 4)), (200, pull_state("done", 4, 4))]
    assert run(admin, "models", "pull", "m", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["completed"] for line in lines] == [1, 2, 4]


def test_connection_refused_is_one_line(capsys: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening
        assert main(["--url", url, "--timeout", "5", "apis", "list"]) == 1
    assert capsys.readouterr().err == f"flm: error: cannot reach {url}: connection refused\n"


def test_small_formatters() -> None:
    assert fmt.short_time("2024-05-01T12:34:56.789+02:00") == "2024-05-01 10:34:56"
    assert fmt.short_time(None) == "-"
    assert fmt.short_time("yesterday") == "yesterday"
    assert [fmt.human_bytes(n) for n in (0, 1023, 1536, 5 * 2**40)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 TiB"]
    assert [fmt.human_duration(s) for s in (5, 75, 7300, 200000)] == [
        "5s", "1m15s", "2h01m", "2d07h"]
    assert fmt.table(["A", "NUM"], [["x", 1], ["long", 100]]) == (
        "A     NUM\nx       1\nlong  100")


def test_no_group_is_a_usage_error(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["models"])
    assert exc.value.code == 2
