"""Two real llama.cpp ``llama-server`` processes behind FLM (backend kind ``openai``):
answers with usage, balance, failover when one is killed, recovery.

Runs only when ``FLM_LLAMA_SERVER`` (the ``llama-server`` binary) and ``FLM_LLAMA_MODEL``
(a GGUF; a tiny random-weight one is enough: README, "Test it") are set:
CI does not build llama.cpp, so there it is skipped.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, api_url, free_port, wait_for
from tests.flmproc import stop_process

SERVER = os.environ.get("FLM_LLAMA_SERVER", "")
MODEL_FILE = os.environ.get("FLM_LLAMA_MODEL", "")
ALIAS = "tiny"
MESSAGES = [{"role": "user", "content": "hello there"}]
# Few tokens, whatever the random weights sample (an early end of sequence included).
GEN = {"max_tokens": 8, "extra_body": {"ignore_eos": True}}
# Probes often enough that states change within a second or two.
SETTINGS = {"backend_probe_interval_s": 0.3, "model_cache_ttl_s": 1}
START_TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(
    not (SERVER and MODEL_FILE),
    reason="set FLM_LLAMA_SERVER (a llama-server binary) and FLM_LLAMA_MODEL (a GGUF) to run")


class LlamaServer:
    """One ``llama-server`` on a loopback port; ``start`` again after ``kill`` reuses it."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaServer:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [SERVER, "-m", MODEL_FILE, "--host", "127.0.0.1", "--port", str(self.port),
                 "--alias", ALIAS, "-c", "512", "-np", "2", "-t", "1", "-n", "16"],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.healthy, START_TIMEOUT, f"llama-server on {self.port} to be healthy", 0.1)
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"llama-server exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)


@pytest.fixture
def llamas(gateway_factory: Callable[..., Gateway], tmp_path: Path
           ) -> Iterator[tuple[Gateway, list[LlamaServer]]]:
    """A gateway with two llama-servers added as backends ``l1`` and ``l2``, both up."""
    servers = [LlamaServer(tmp_path / f"llama{i}.log") for i in (1, 2)]
    try:
        for server in servers:
            server.start()
        gw = gateway_factory(settings=SETTINGS)
        for name, server in zip(("l1", "l2"), servers):
            r = gw.admin("POST", "/api/backends", {"name": name, "url": server.url + "/v1",
                                                   "kind": "openai", "max_concurrent": 2})
            assert r.status_code == 201, r.text
        wait_for(lambda: all(b["state"] == "up" and ALIAS in (b["models"] or [])
                             for n, b in backends(gw).items() if n in ("l1", "l2")), 15,
                 "both llama-servers to be up, listing the model")
        yield gw, servers
    finally:
        for server in servers:
            server.stop()


def backends(gw: Gateway) -> dict[str, dict[str, Any]]:
    r = gw.admin("GET", "/api/backends")
    assert r.status_code == 200, r.text
    return {b["name"]: b for b in r.json()["items"]}


def states(gw: Gateway) -> dict[str, str]:
    return {name: b["state"] for name, b in backends(gw).items()}


def rows(gw: Gateway, api: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The API's log rows once there are ``n`` of them (rows are written in batches)."""
    def enough() -> list[dict[str, Any]] | None:
        items = gw.admin("GET", f"/api/apis/{api['id']}/logs?limit=200").json()["items"]
        return items if len(items) >= n else None
    return wait_for(enough, 10, f"{n} log rows")


def ask(client: openai.OpenAI, request_id: str) -> Any:
    """One non-streaming chat, with its raw response (for FLM's headers)."""
    raw = client.chat.completions.with_raw_response.create(
        model="anything", messages=MESSAGES, extra_headers={"X-Request-Id": request_id}, **GEN)
    return raw


def test_two_llama_servers(llamas: tuple[Gateway, list[LlamaServer]]) -> None:
    gw, servers = llamas
    api = gw.create_api(model=ALIAS, backends=["l1", "l2"], max_concurrent=4)
    client = openai.OpenAI(base_url=f"{api_url(api)}/v1", api_key=api["key"], max_retries=0,
                           timeout=30)

    # Answers, with usage logged: non-streaming and streaming.
    done = client.chat.completions.create(model="anything", messages=MESSAGES, **GEN)
    assert done.choices[0].finish_reason == "length", done
    assert done.usage and done.usage.prompt_tokens > 0 and done.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(
        model="anything", messages=MESSAGES, stream=True,
        extra_headers={"X-Request-Id": "the-stream"}, **GEN))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    logged = {r["request_id"]: r for r in rows(gw, api, 2)}["the-stream"]
    assert logged["prompt_tokens"] > 0 and logged["completion_tokens"] == 8, logged
    assert logged["backend"] in ("l1", "l2"), logged

    # Spread: equal load and weight, so a tie is broken at random between the two.
    for i in range(20):
        assert ask(client, f"spread-{i}").http_response.status_code == 200
    spread = Counter(r["backend"] for r in rows(gw, api, 22) if r["request_id"].startswith("spread-"))
    assert set(spread) == {"l1", "l2"}, spread
    print(f"\nspread over 20 requests: {dict(spread)}")

    # Failover: l1 wins every tie now, so the next requests go to it first, find it dead,
    # and go on to l2 -- until l1 is known down (5 failed requests or 3 failed probes).
    r = gw.admin("PATCH", "/api/backends/l1", {"weight": 2})
    assert r.status_code == 200, r.text
    servers[0].kill()
    answered = []
    for i in range(8):
        raw = ask(client, f"failover-{i}")
        assert raw.http_response.status_code == 200, raw.http_response.text
        answered.append((raw.headers["x-flm-backend"], raw.headers["x-flm-attempts"]))
    print(f"after SIGKILL of l1, (backend, attempts) of 8 sequential requests: {answered}")
    assert {backend for backend, _ in answered} == {"l2"}, answered
    assert answered[0][1] == "2", answered  # l1 tried first, refused, l2 answered
    wait_for(lambda: states(gw)["l1"] == "down", 15, "l1 to be down")
    print(f"l1 down: last_error={backends(gw)['l1']['last_error']!r}")

    # Recovery: the same port again, up again, and serving.
    servers[0].start()
    wait_for(lambda: states(gw)["l1"] == "up", 15, "l1 to be up again")
    first = ask(client, f"recovered-{uuid.uuid4().hex[:6]}")
    assert (first.headers["x-flm-backend"], first.headers["x-flm-attempts"]) == ("l1", "1")
    print(f"l1 up again; states: {states(gw)}")
