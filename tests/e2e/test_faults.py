"""Faults around a running ``twistd flm``: SIGKILL under load, a locked database, a full
disk, and an upstream that breaks in every way the fake knows.

Everything is on 127.0.0.1 and bounded in time; each test that breaks the service has a
gateway of its own.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.fakes.backend import FakeProcess

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
FLUSH_INTERVAL = 1.0


def db_path(gw: Gateway) -> Path:
    return gw.data_dir / "flm.db"


def query(gw: Gateway, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path(gw), timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def chat(api: dict[str, Any], client: httpx.Client, key: str | None = None,
         headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    h = {"Authorization": f"Bearer {key or api['key']}", **(headers or {})}
    return client.post(f"{api_url(api)}/v1/chat/completions", json={**CHAT, **body}, headers=h)


class Load:
    """``threads`` clients posting as fast as the gateway answers; every answer is timed and
    its request id kept, until ``stop()``."""

    def __init__(self, api: dict[str, Any], threads: int = 4, pause: float = 0.0) -> None:
        self.api = api
        self.pause = pause
        self.answered: list[tuple[float, str, int]] = []  # (time answered, request id, status)
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                rid = uuid.uuid4().hex
                try:
                    r = chat(self.api, client, headers={"X-Request-Id": rid})
                except httpx.HTTPError:
                    with self._lock:
                        self.errors += 1
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.answered.append((time.monotonic(), rid, r.status_code))
                if self.pause:
                    time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
            assert not t.is_alive(), "a load thread did not finish"


def log_request_ids(gw: Gateway, api_id: int) -> list[str]:
    return [r[0] for r in query(gw, "SELECT request_id FROM request_logs WHERE api_id = ?",
                                api_id)]


def log_rows(gw: Gateway) -> dict[str, int]:
    return gw.admin("GET", "/api/system").json()["log_rows"]  # type: ignore[no-any-return]


def wait_answered(load: "Load", more: int, what: str) -> None:
    """Until the load has had ``more`` answers beyond those it has now."""
    start = len(load.answered)
    wait_for(lambda: len(load.answered) >= start + more, 15, f"{more} answers {what}")


def wait_all_rows_flushed(gw: Gateway) -> None:
    """Until no row waits in the buffer: nothing more can reach the table after this."""
    wait_for(lambda: log_rows(gw)["buffered"] == 0, 10, "the log buffer to be empty")


def health(gw: Gateway) -> tuple[int, dict[str, Any]]:
    r = gw.http.get(f"{gw.admin_url}/health", timeout=10)
    return r.status_code, r.json()


# -- SIGKILL ---------------------------------------------------------------------------------

def test_sigkill_under_load_loses_no_admin_change_and_at_most_the_buffer(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(settings={"log_flush_interval_s": FLUSH_INTERVAL})
    target = gw.create_api(max_concurrent=4)
    apis = [gw.create_api(start=False) for _ in range(3)]
    load = Load(target, threads=4)
    try:
        # a few flushes under load
        wait_for(lambda: log_rows(gw)["written"] >= 60, 15, "60 rows written under load")
        # Admin changes, each answered, while requests flow; the kill follows the last answer.
        expected: dict[int, dict[str, Any]] = {}
        keys_now: dict[int, str] = {a["id"]: a["key"] for a in apis}
        old_keys: dict[int, str] = {}
        for i, api in enumerate(apis):
            r = gw.admin("PATCH", f"/api/apis/{api['id']}",
                         {"max_queue": 100 + i, "priority": i + 1, "rate_limit_rpm": 600})
            assert r.status_code == 200, r.text
            r = gw.admin("POST", f"/api/apis/{api['id']}/rotate-key")
            assert r.status_code == 200, r.text
            old_keys[api["id"]], keys_now[api["id"]] = keys_now[api["id"]], r.json()["key"]
            expected[api["id"]] = {"max_queue": 100 + i, "priority": i + 1,
                                   "rate_limit_rpm": 600, "key_prefix": r.json()["key_prefix"]}
        last = gw.create_api(start=True)
        r = gw.admin("PATCH", f"/api/apis/{last['id']}", {"max_concurrent": 3})
        assert r.status_code == 200, r.text
        killed_at = time.monotonic()
        gw.kill()  # SIGKILL, at once after the last answer
    finally:
        load.stop()

    answered = [a for a in load.answered if a[0] <= killed_at]
    assert all(status == 200 for _, _, status in answered)
    n = len(answered)
    assert n > 50, f"too little load to mean anything: {n}"

    # The database survives as it is on disk (the WAL is recovered on open).
    assert query(gw, "PRAGMA integrity_check") == [("ok",)]
    rows = log_request_ids(gw, target["id"])
    assert len(rows) == len(set(rows)), "a row was written twice"
    sent = {rid for _, rid, _ in answered}
    # A row is recorded as its response ends: at most the requests in flight at the kill
    # may have rows without the client having read the answer.
    assert len(set(rows) - sent) <= 4
    lost = sent - set(rows)
    # What may be lost: the rows recorded since the last flush that committed, i.e. those
    # answered in the last flush interval (plus a flush's own time).
    window = FLUSH_INTERVAL + 0.5
    recent = {rid for t, rid, _ in answered if t > killed_at - window}
    rate = len(recent) / window
    print(f"\nSIGKILL: {n} answered, {len(rows)} rows kept, {len(lost)} lost; "
          f"{len(recent)} answered in the last {window:g} s ({rate:.0f}/s)")
    kept = set(rows) & sent
    assert n - len(recent) <= len(kept) <= n
    assert lost <= recent, f"{len(lost - recent)} rows older than the last flush are gone"

    gw.start()
    assert query(gw, "PRAGMA integrity_check") == [("ok",)]
    for api in apis:
        shown = gw.admin("GET", f"/api/apis/{api['id']}").json()
        assert {k: shown[k] for k in expected[api["id"]]} == expected[api["id"]], shown
        assert shown["status"] == "stopped"
    shown = gw.admin("GET", f"/api/apis/{last['id']}").json()
    assert (shown["status"], shown["max_concurrent"]) == ("running", 3), shown
    # Keys: the rotated one works, the old one does not (start one API to ask it).
    probe = apis[0]
    assert gw.admin("POST", f"/api/apis/{probe['id']}/start").status_code == 200
    wait_for(lambda: _port_answers(probe["port"]), 5, "the restarted API's port")
    with httpx.Client(timeout=10) as client:
        assert chat(probe, client, key=keys_now[probe["id"]]).status_code == 200
        assert chat(probe, client, key=old_keys[probe["id"]]).status_code == 401
        assert chat(target, client).status_code == 200


def _port_answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
        return True
    except httpx.HTTPError:
        return False


# -- a locked database ---------------------------------------------------------------------

def watch_health(gw: Gateway, stop: threading.Event, seen: list[str]) -> threading.Thread:
    def run() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    body = client.get(f"{gw.admin_url}/health").json()
                    if not seen or seen[-1] != body["status"]:
                        seen.append(body["status"])
                except httpx.HTTPError:
                    seen.append("unanswered")
                time.sleep(0.1)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_locked_database_during_a_flush(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(settings={"log_flush_interval_s": FLUSH_INTERVAL})
    api = gw.create_api(max_concurrent=2)
    assert health(gw)[0] == 200
    stop, seen = threading.Event(), []
    watcher = watch_health(gw, stop, seen)
    lock = sqlite3.connect(db_path(gw), timeout=10, isolation_level=None)
    load = None
    try:
        lock.execute("BEGIN EXCLUSIVE")
        load = Load(api, threads=2)
        # busy_timeout is 5 s: a flush started under the lock fails after it.
        wait_for(lambda: "degraded" in seen, 12, "/health to say degraded")
        status, body = health(gw)
        assert (status, body["status"], body["database"]["writable"]) == (503, "degraded", False)
        wait_answered(load, 10, "while the database is locked")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    try:
        wait_for(lambda: seen[-1] == "ok", 15, "/health to say ok again")
        wait_answered(load, 10, "once the database is free again")
    finally:
        load.stop()
        stop.set()
        watcher.join(10)
    assert seen[0] == "ok" and "degraded" in seen and seen[-1] == "ok", seen
    assert "unanswered" not in seen, seen
    assert all(s == 200 for _, _, s in load.answered), "proxying stopped"
    assert load.errors == 0
    assert len(load.answered) > 20
    sent = [rid for _, rid, _ in load.answered]
    wait_for(lambda: len(log_request_ids(gw, api["id"])) >= len(sent), 10, "every row")
    wait_all_rows_flushed(gw)
    rows = log_request_ids(gw, api["id"])
    assert sorted(rows) == sorted(sent), (len(rows), len(sent))  # each exactly once
    assert gw.admin("GET", "/api/system").json()["dropped_log_rows"] == 0


# -- a full disk ---------------------------------------------------------------------------

@pytest.fixture
def tmpfs_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose data dir is a 2 MiB tmpfs (root only; skipped otherwise)."""
    fake = FakeProcess(str(tmp_path / "fake.log")).start()
    gw = Gateway(tmp_path, fake, settings={"log_flush_interval_s": FLUSH_INTERVAL,
                                           "log_batch_rows": 50})
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                              str(gw.data_dir)], capture_output=True, text=True, timeout=10)
    if mounted.returncode != 0:
        fake.stop()
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip() or 'not permitted'})")
    try:
        gw.start()
        yield gw
    finally:
        gw.kill()
        gw.http.close()
        fake.stop()
        subprocess.run(["umount", "-l", str(gw.data_dir)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full, down to the last block."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    return path


def test_disk_full_keeps_proxying_and_retries_the_rows(tmpfs_gateway: Gateway) -> None:
    gw = tmpfs_gateway
    api = gw.create_api(max_concurrent=2)
    with httpx.Client(timeout=10) as client:
        assert chat(api, client).status_code == 200
    wait_for(lambda: len(log_request_ids(gw, api["id"])) == 1, 5, "the first row")
    filler = fill(gw.data_dir)
    stop, seen = threading.Event(), []
    watcher = watch_health(gw, stop, seen)
    load = Load(api, threads=2, pause=0.05)  # ~40 rows/s: the freed space must hold them all
    try:
        wait_for(lambda: "degraded" in seen, 20, "/health to say degraded")
        body = health(gw)[1]
        assert body["database"]["writable"] is False, body
        wait_answered(load, 10, "while the disk is full")
        answered_while_full = len(load.answered)
        os.remove(filler)
        wait_for(lambda: seen[-1] == "ok", 15, "/health to say ok once space is freed")
        wait_answered(load, 10, "once space is freed")
    finally:
        load.stop()
        stop.set()
        watcher.join(10)
    assert answered_while_full > 10, "proxying stopped while the disk was full"
    assert all(s == 200 for _, _, s in load.answered) and load.errors == 0
    sent = [rid for _, rid, _ in load.answered]
    try:
        wait_for(lambda: len(log_request_ids(gw, api["id"])) >= len(sent) + 1, 10, "every row")
    except AssertionError:
        rows = log_request_ids(gw, api["id"])
        raise AssertionError((len(rows), len(set(rows)), len(sent), seen,
                              gw.admin("GET", "/api/system").json()["log_rows"],
                              gw.output()[-3000:]))
    wait_all_rows_flushed(gw)
    rows = log_request_ids(gw, api["id"])
    assert len(rows) == len(set(rows)) == len(sent) + 1, (len(rows), len(sent))
    assert set(sent) <= set(rows)
    assert query(gw, "PRAGMA integrity_check") == [("ok",)]
    assert gw.admin("GET", "/api/system").json()["dropped_log_rows"] == 0


# -- upstream faults -----------------------------------------------------------------------

def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.admin_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def assert_nothing_leaked(gw: Gateway, api: dict[str, Any]) -> None:
    def settled() -> bool:
        system = gw.admin("GET", "/api/system").json()
        mine = system["apis"][api["name"]]
        return (mine["in_flight"], mine["queue_depth"], system["backend"]["in_use"],
                system["backend"]["waiting"]) == (0, 0, 0, 0)
    wait_for(settled, 5, "in-flight and queue counts back to 0")
    label = {"api": str(api["id"])}
    assert metric(gw, "flm_in_flight", **label) == 0
    assert metric(gw, "flm_queue_depth", **label) == 0
    assert metric(gw, "flm_backend_in_use") == 0


FAULTS = [
    ("reset", {}, (502,)),
    ("garbage", {}, (502,)),
    ("stall", {}, (504,)),
    ("die_midstream", {}, (200,)),
    ("die_midstream", {"stream": True}, (200,)),
    ("stall_midstream", {"stream": True}, (200,)),
    ("status:500", {}, (500,)),
]


@pytest.mark.parametrize("fail,extra,statuses", FAULTS,
                         ids=[f"{f}{'-stream' if e else ''}" for f, e, _ in FAULTS])
def test_upstream_fault_leaks_nothing_and_the_next_request_works(
        gateway: Gateway, fake: FakeProcess, fail: str, extra: dict[str, Any],
        statuses: tuple[int, ...]) -> None:
    # One slot and a short queue timeout: a leaked slot would turn the next request into a 503.
    api = gateway.create_api(max_concurrent=1, max_queue=4, queue_timeout_s=3,
                             upstream_timeout_s=1)
    with httpx.Client(timeout=15) as client:
        for _ in range(3):
            try:
                r = chat(api, client, headers={"X-Fake-Fail": fail}, **extra)
                status = r.status_code
                if extra.get("stream"):
                    assert "event: error" in r.text, r.text[-300:]
            except httpx.HTTPError:
                status = 200  # a non-SSE body cut short: the connection is aborted
            assert status in statuses, status
        assert_nothing_leaked(gateway, api)
        started = time.monotonic()
        r = chat(api, client)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 2.5
    assert_nothing_leaked(gateway, api)
    rows = gateway.admin("GET", f"/api/apis/{api['id']}/logs?limit=10")
    assert rows.status_code == 200


def test_concurrent_faults_free_every_slot(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(max_concurrent=2, max_queue=8, queue_timeout_s=20,
                             upstream_timeout_s=1)
    fails = ["reset", "garbage", "stall", "die_midstream", "stall_midstream", "reset",
             "stall", "garbage"]
    results: list[Any] = []

    def one(fail: str) -> None:
        with httpx.Client(timeout=20) as client:
            try:
                results.append(chat(api, client, headers={"X-Fake-Fail": fail},
                                    stream=fail.endswith("midstream")).status_code)
            except httpx.HTTPError as e:
                results.append(type(e).__name__)
    threads = [threading.Thread(target=one, args=(f,), daemon=True) for f in fails]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert len(results) == len(fails), results
    assert all(r != 503 for r in results), results  # nobody timed out in the queue
    assert_nothing_leaked(gateway, api)
    with httpx.Client(timeout=10) as client:
        two = [threading.Thread(target=lambda: results.append(chat(api, client).status_code))
               for _ in range(2)]
        for t in two:
            t.start()
        for t in two:
            t.join(10)
    assert results[-2:] == [200, 200], results
    assert_nothing_leaked(gateway, api)
