"""Every ``flm`` command against the real admin app (``twistd -n flm`` over a real socket).

The unit tests in ``tests/test_cli.py`` keep canned JSON for formatting only; what a
command sends and how it reads the answer is tested here, against what the server sends.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from flm.cli import main
from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.test_cli import pull_state


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("FLM_URL", "FLM_ADMIN_TOKEN", "FLM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def flm(gw: Gateway, capsys: Any, *argv: str, code: int = 0) -> str:
    """Run ``flm`` in this process; check the exit code; return what it printed."""
    got = main(["--url", gw.admin_url, "--token", gw.token, "--timeout", "10", *argv])
    out, err = capsys.readouterr()
    assert got == code, (got, out, err)
    return out if code == 0 else err


def test_apis_commands_end_to_end(gateway: Gateway, capsys: Any) -> None:
    name, port = f"cli-{uuid.uuid4().hex[:8]}", gateway.unused_port()
    out = flm(gateway, capsys, "apis", "create", name, "--model", "llama3.2:1b", "--port",
              str(port), "--max-queue", "4", "--rate-limit-rpm", "60")
    assert out.startswith(f"Created API {name} (id ") and f"running on port {port}" in out, out
    key = out.split("\n\n")[1].strip()
    assert key.startswith("flm-") or len(key) > 20, out

    shown = flm(gateway, capsys, "apis", "show", name)
    fields = listing(shown)
    assert fields["name"] == name and fields["max queue"] == "4", shown
    assert fields["rate limit"] == "60/min" and fields["last used"] == "never", shown
    assert key not in shown

    assert name in flm(gateway, capsys, "apis", "list", "--status", "running")
    updated = flm(gateway, capsys, "apis", "update", name, "--max-queue", "8",
                  "--rate-limit-rpm", "none")
    assert listing(updated)["max queue"] == "8" and listing(updated)["rate limit"] == "none"
    assert flm(gateway, capsys, "apis", "stop", name) == f"API {name} is stopped.\n"
    assert name not in flm(gateway, capsys, "apis", "list", "--status", "running")
    assert flm(gateway, capsys, "apis", "start", name) == f"API {name} is running on port {port}.\n"

    rotated = flm(gateway, capsys, "apis", "rotate-key", name)
    new_key = rotated.split("\n\n")[1].strip()
    assert rotated.startswith(f"New key for API {name} ") and new_key != key, rotated
    api = {"port": port}
    wait_for(lambda: _chat(api, new_key) == 200, 5, "the new key to work")
    assert _chat(api, key) == 401

    assert json.loads(flm(gateway, capsys, "--json", "apis", "delete", name)) == {"deleted": name}
    err = flm(gateway, capsys, "apis", "show", name, code=1)
    assert err.startswith("flm: error: ") and name in err and "\n" == err[-1], err


def listing(text: str) -> dict[str, str]:
    """``label  value`` lines as a dict."""
    return dict(line.split("  ", 1) and [p.strip() for p in line.split("  ", 1)]
                for line in text.splitlines())


def _chat(api: dict[str, Any], key: str) -> int:
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(api_url(api) + "/v1/chat/completions", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {key}"}).status_code


def test_apis_list_follows_the_real_cursors(
    gateway: Gateway, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flm.cli as package
    from flm.cli import commands

    names = {gateway.create_api(start=False)["name"] for _ in range(3)}
    whole = json.loads(flm(gateway, capsys, "--json", "apis", "list"))
    monkeypatch.setattr(commands, "PAGE_SIZE", 2)  # pages of two: the cursor is followed
    paged = json.loads(flm(gateway, capsys, "--json", "apis", "list"))
    assert paged["items"] == whole["items"] and paged["total"] == whole["total"] >= 3
    assert names <= {a["name"] for a in paged["items"]}
    limited = json.loads(flm(gateway, capsys, "--json", "apis", "list", "--limit", "2"))
    assert limited["items"] == whole["items"][:2] and limited["next_cursor"]
    assert package.main is main


def test_logs_and_metrics_show_a_real_request(gateway: Gateway, capsys: Any) -> None:
    api = gateway.create_api()
    assert _chat(api, api["key"]) == 200
    rows = wait_for(lambda: json.loads(flm(gateway, capsys, "--json", "logs", api["name"]))
                    ["items"], 10, "the request's log row")  # fmt: skip
    assert rows[0]["status"] == 200 and rows[0]["path"] == "/v1/chat/completions"
    text = flm(gateway, capsys, "logs", api["name"], "--status", "2xx")
    header, line = text.splitlines()
    assert header.startswith("TIME") and "  200  POST    /v1/chat/completions" in line, text
    assert flm(gateway, capsys, "logs", api["name"], "--status", "5xx") == "No log rows.\n"

    table = wait_for(lambda: "REQUESTS" in (t := flm(gateway, capsys, "metrics", api["name"]))
                     and t, 20, "the request in the metrics")  # fmt: skip
    assert table.startswith("One row per 1m00s with requests.\n"), table
    assert table.splitlines()[2].split()[2] == "1", table  # START is two words


def test_status_against_the_real_service(gateway: Gateway, capsys: Any) -> None:
    out = flm(gateway, capsys, "status")
    assert out.startswith(f"FLM at {gateway.admin_url}: ok\nbackend  reachable\n"), out
    both = json.loads(flm(gateway, capsys, "status", "--json"))
    assert both["health"]["status"] == "ok" and "uptime_s" in both["system"]


def test_models_list_pull_and_rm(gateway: Gateway, capsys: Any) -> None:
    listed = flm(gateway, capsys, "models", "list")
    assert listed.splitlines()[0].split() == ["NAME", "SIZE", "PARAMS", "QUANT", "MODIFIED"]
    assert "llama3.2:1b" in listed
    model = f"cli{uuid.uuid4().hex[:6]}:1b"
    gateway.fake.configure(pull_interval=0.1)  # ~2 s: the server sends states on the way
    out = flm(gateway, capsys, "models", "pull", model)
    lines = out.splitlines()
    assert lines[0] in ("starting", "pulling manifest"), out
    assert lines[-2:] == ["success: 100% (1.9 MiB / 1.9 MiB)", f"Pulled {model}."], out
    layer = re.compile(r"pulling [0-9a-f]{12}: \d+% \([0-9.]+ [KM]i?B / [0-9.]+ [KM]iB\)")
    assert any(layer.fullmatch(line) for line in lines), out
    assert model in flm(gateway, capsys, "models", "list")
    assert flm(gateway, capsys, "models", "rm", model) == f"Deleted model {model}.\n"
    assert model not in flm(gateway, capsys, "models", "list")

    err = flm(gateway, capsys, "models", "pull", "missing:1b", code=1)
    assert err.endswith("flm: error: pull of missing:1b failed: "
                        "pull model manifest: file does not exist\n"), err


def test_models_pull_json_states_are_the_ones_the_unit_tests_use(
    gateway: Gateway, capsys: Any
) -> None:
    out = flm(gateway, capsys, "--json", "models", "pull", f"cli{uuid.uuid4().hex[:6]}:1b")
    states = [json.loads(line) for line in out.splitlines()]
    assert states[-1]["status"] == "done" and states[-1]["percent"] == 100.0
    for state in states:  # the canned states of tests/test_cli.py have the same shape
        assert set(state) == set(pull_state("running", 0, 0)), state


def test_models_rm_of_a_model_in_use_needs_force(gateway: Gateway, capsys: Any) -> None:
    model = f"cli{uuid.uuid4().hex[:6]}:1b"
    flm(gateway, capsys, "models", "pull", model)
    gateway.create_api(model=model)
    err = flm(gateway, capsys, "models", "rm", model, code=1)
    assert err.startswith("flm: error: ") and "--force" in err, err
    assert flm(gateway, capsys, "models", "rm", model, "--force") == f"Deleted model {model}.\n"


# -- the installed command on a terminal ------------------------------------------------


def flm_script() -> list[str]:
    script = Path(sys.executable).with_name("flm")
    assert script.exists(), "the flm console script is not installed (pip install -e .)"
    return [str(script)]


def run_on_a_terminal(gw: Gateway, *argv: str, timeout: float = 30) -> tuple[int, str]:
    """Run the installed ``flm`` with its stdout on a pseudo-terminal; (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLM_")}
    env.update(FLM_URL=gw.admin_url, FLM_ADMIN_TOKEN=gw.token, COLUMNS="120", LINES="24")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([*flm_script(), *argv], stdout=secondary, stderr=subprocess.PIPE,
                            env=env)  # fmt: skip
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(primary)
        assert proc.stderr is not None
        proc.stderr.close()
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_pull_on_a_terminal_shows_speed_and_eta(gateway: Gateway) -> None:
    # About 4 s of download: the bar must show the server's speed and ETA on the way.
    gateway.fake.configure(pull_interval=0.2)
    model = f"cli{uuid.uuid4().hex[:6]}:1b"
    code, out = run_on_a_terminal(gateway, "models", "pull", model)
    assert code == 0, out
    frames = [f for f in out.split("\r") if f.strip()]
    bars = [f for f in frames if "[" in f and "%" in f]
    assert any("/s" in f and "ETA " in f for f in bars), frames
    assert all(len(f.replace("\x1b[K", "").rstrip("\r\n")) < 120 for f in bars), bars
    assert out.rstrip().endswith(f"Pulled {model}."), out


def test_the_console_script_prints_its_version(gateway: Gateway) -> None:
    from flm import __version__

    done = subprocess.run([*flm_script(), "--version"], capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    assert done.stdout.strip() == f"flm {__version__}"
    code, out = run_on_a_terminal(gateway, "apis", "list", "--json")
    assert code == 0 and "items" in json.loads(out.replace("\r\n", "\n")), out


def test_create_sends_every_option(gateway: Gateway, capsys: Any) -> None:
    name, port = f"cli-{uuid.uuid4().hex[:8]}", gateway.unused_port()
    out = flm(gateway, capsys, "apis", "create", name, "--model", "not-listed:7b", "--port",
              str(port), "--queue-timeout", "2.5", "--upstream-timeout", "120",
              "--rate-limit-rpm", "60", "--priority", "5", "--max-concurrent", "2",
              "--max-queue", "0", "--no-start", "--allow-unknown-model")  # fmt: skip
    assert out.startswith(f"Created API {name} (id ") and f"stopped (port {port})" in out, out
    api = gateway.admin("GET", f"/api/apis/{name}").json()
    assert {k: api[k] for k in ("model", "port", "queue_timeout_s", "upstream_timeout_s",
                                "rate_limit_rpm", "priority", "max_concurrent", "max_queue",
                                "status")} == {  # fmt: skip
        "model": "not-listed:7b", "port": port, "queue_timeout_s": 2.5,
        "upstream_timeout_s": 120, "rate_limit_rpm": 60, "priority": 5,
        "max_concurrent": 2, "max_queue": 0, "status": "stopped"}
    err = flm(gateway, capsys, "apis", "create", f"x{name}", "--model", "not-listed:7b",
              code=1)
    assert err.startswith("flm: error: ") and err.count("\n") == 1, err


def test_a_refused_token_says_where_it_came_from(
    gateway: Gateway, capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = ["--url", gateway.admin_url, "--timeout", "10"]
    assert main([*base, "--token", "wrong", "apis", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flm: error: ") and err.endswith(
        " (the admin token from --token was refused)\n"), err
    assert main([*base, "--data-dir", str(tmp_path / "none"), "apis", "list"]) == 1
    assert capsys.readouterr().err.endswith(
        f" (no admin token: use --token, $FLM_ADMIN_TOKEN or {tmp_path}/none/admin-token)\n")

    # Where the token comes from, first found wins: --token, $FLM_ADMIN_TOKEN, the file in
    # --data-dir / $FLM_DATA_DIR, ~/.local/share/flm/admin-token; $FLM_URL for the URL.
    home = tmp_path / ".local" / "share" / "flm"
    home.mkdir(parents=True)
    (home / "admin-token").write_text(gateway.token + "\n")
    monkeypatch.setenv("FLM_URL", gateway.admin_url)
    assert main(["apis", "list", "--json"]) == 0
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin-token").write_text("wrong")
    monkeypatch.setenv("FLM_DATA_DIR", str(tmp_path / "data"))
    assert main(["apis", "list", "--json"]) == 1
    monkeypatch.setenv("FLM_ADMIN_TOKEN", gateway.token)
    assert main(["apis", "list", "--json"]) == 0
    assert main(["--token", "wrong", "apis", "list", "--json"]) == 1
    capsys.readouterr()


def test_logs_follow_prints_new_rows_until_ctrl_c(
    gateway: Gateway, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flm.cli import logs

    api = gateway.create_api()
    assert _chat(api, api["key"]) == 200
    wait_for(lambda: gateway.admin("GET", f"/api/apis/{api['name']}/logs").json()["items"],
             10, "the first log row")  # fmt: skip
    ticks: list[float] = []

    def one_more_request(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) == 4:
            raise KeyboardInterrupt
        if len(ticks) == 1:  # a second request while following; wait for its row
            assert _chat(api, api["key"]) == 200
            wait_for(lambda: len(gateway.admin("GET", f"/api/apis/{api['name']}/logs")
                                 .json()["items"]) == 2, 10, "the second log row")  # fmt: skip

    monkeypatch.setattr(logs, "sleep", one_more_request)
    code = main(["--url", gateway.admin_url, "--token", gateway.token, "logs", api["name"],
                 "--follow", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 130 and captured.err == "", captured  # Ctrl-C ends with 130, as documented
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 2 and rows[0]["id"] < rows[1]["id"], rows


def test_ctrl_c_during_a_pull_stops_watching_only(
    gateway: Gateway, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flm.cli import models, progress

    gateway.fake.configure(pull_interval=0.1)
    seen: list[dict[str, Any]] = []
    update = progress.LineProgress.update

    def interrupted(self: progress.LineProgress, state: dict[str, Any]) -> None:
        update(self, state)
        seen.append(state)
        if state["completed"] > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.LineProgress, "update", interrupted)
    model = f"cli{uuid.uuid4().hex[:6]}:1b"
    assert main(["--url", gateway.admin_url, "--token", gateway.token, "models", "pull",
                 model]) == 130  # fmt: skip
    job = seen[-1]["job"]
    assert capsys.readouterr().err == (
        f"flm: stopped watching; the pull goes on in the background (job {job})\n")
    assert models is not None
    done = wait_for(lambda: (s := gateway.admin("GET", f"/api/models/pulls/{job}").json())
                    ["status"] != "running" and s, 20, "the pull to finish")  # fmt: skip
    assert done["status"] == "done", done
