"""Quick checks of the fake model server: its shapes satisfy the real clients."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from treq.testing import StubTreq
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes.backend import FakeProcess, FakeState, make_site


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    proc = FakeProcess().start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()


def oa(fake: FakeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=0, timeout=5)


def test_openai_chat_and_stream_usage(fake: FakeProcess) -> None:
    client = oa(fake)
    reply = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi you"}])
    assert reply.choices[0].message.content == "Hello from the"
    assert reply.usage is not None and reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 3
    chunks = list(client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"X-Fake-Chunks": "4"},
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    plain = list(client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.usage is None and c.choices for c in plain)
    last = fake.stats()["last"]
    assert last["headers"]["authorization"] == "Bearer sk-test"
    assert last["json"]["model"] == "m1"


def test_openai_completions_embeddings_models(fake: FakeProcess) -> None:
    client = oa(fake)
    assert client.completions.create(model="m", prompt="say").choices[0].text == "Hello from the"
    emb = client.embeddings.create(model="e", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    floats = client.embeddings.create(model="e", input="a", encoding_format="float")
    assert floats.data[0].embedding == emb.data[0].embedding
    assert {m.id for m in client.models.list()} >= {"llama3.2:1b", "qwen2.5:0.5b"}


def test_ollama_client_roundtrip(fake: FakeProcess) -> None:
    client = ollama.Client(host=fake.url, timeout=5)
    assert client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=False).message.content == "Hello from the"
    parts = list(client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [p.done for p in parts] == [False, False, False, True] and parts[-1].eval_count == 3
    assert client.generate(model="m", prompt="hi").response == "Hello from the"
    assert "".join(p.response or "" for p in client.generate(model="m", prompt="hi", stream=True)) == "Hello from the"
    assert len(client.embed(model="e", input=["x", "y"]).embeddings) == 2
    names = {m.model for m in client.list().models}
    assert names == {"llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest"}
    assert client.show("llama3.2:1b").details is not None


def test_pull_progress_and_delete(fake: FakeProcess) -> None:
    client = ollama.Client(host=fake.url, timeout=5)
    events = list(client.pull("tinyllama", stream=True))
    assert events[0].status == "pulling manifest" and events[-1].status == "success"
    layer = [e for e in events if e.digest == events[1].digest]
    assert [e.completed for e in layer] == sorted(e.completed for e in layer)
    assert layer[-1].completed == layer[-1].total
    assert "tinyllama:latest" in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(client.pull("missing-model", stream=True))
    client.delete("tinyllama")
    response = httpx.request("DELETE", f"{fake.url}/api/delete", json={"name": "tinyllama"})
    assert response.status_code == 404 and response.json() == {"error": "model 'tinyllama' not found"}


def test_failures_and_stats(fake: FakeProcess) -> None:
    url = f"{fake.url}/v1/chat/completions"
    body = {"model": "m", "messages": []}
    r = httpx.post(url, json=body, headers={"X-Fake-Fail": "status:429"})
    assert r.status_code == 429 and r.json()["error"]["message"]
    for mode in ("reset", "garbage"):
        with pytest.raises(httpx.HTTPError):
            httpx.post(url, json=body, headers={"X-Fake-Fail": mode})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=body, headers={"X-Fake-Fail": "stall"}, timeout=0.3)
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", url, json={**body, "stream": True}, headers={"X-Fake-Fail": "die_midstream"}) as r:
            r.read()
    deadline = time.monotonic() + 5
    while (stats := fake.stats())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats["in_flight"] == 0 and stats["cancelled"] == 1 and stats["aborted"] == 3
    assert stats["by_path"] == {"/v1/chat/completions": 5}


def test_global_config_limited_to_paths_and_delay(fake: FakeProcess) -> None:
    fake.configure(fail="status:500", paths=["/api/chat"])
    assert httpx.post(f"{fake.url}/api/chat", json={"model": "m", "stream": False}).status_code == 500
    assert httpx.get(f"{fake.url}/api/tags").status_code == 200
    fake.reset()
    started = time.monotonic()
    httpx.post(f"{fake.url}/api/generate", json={"model": "m", "stream": False}, headers={"X-Fake-Delay": "0.3"})
    assert time.monotonic() - started >= 0.3


def test_stream_interval_spreads_chunks(fake: FakeProcess) -> None:
    arrivals = []
    headers = {"X-Fake-Chunks": "3", "X-Fake-Interval": "0.2"}
    started = time.monotonic()
    with httpx.stream("POST", f"{fake.url}/api/generate", json={"model": "m"}, headers=headers) as r:
        for line in r.iter_lines():
            if line:
                arrivals.append((time.monotonic(), json.loads(line)))
    assert len(arrivals) == 4 and arrivals[-1][1]["done"] is True
    # Lower bounds only (a busy machine delays, never hurries): the stream took its
    # intervals, and the first chunk came well before the last.
    assert arrivals[-1][0] - started >= 0.38  # two intervals between three chunks
    assert arrivals[-1][0] - arrivals[0][0] >= 0.15


class ClockTests(SynchronousTestCase):
    """In-process, socket-free: delays and cancellation against a ``Clock``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.state = FakeState()
        self.treq = StubTreq(make_site(self.state, self.clock).resource)

    def test_delay_waits_for_the_clock(self) -> None:
        d = self.treq.post("http://fake/api/tags", headers={"X-Fake-Delay": "5"})
        d2 = self.treq.get("http://fake/api/tags", headers={"X-Fake-Delay": "5"})
        self.assertNoResult(d2)
        self.clock.advance(5)
        self.treq.flush()
        self.assertEqual(self.successResultOf(d2).code, 200)
        self.assertEqual(self.successResultOf(d).code, 404)  # POST /api/tags is not a route

    def test_cancelled_stream_stops_its_timers(self) -> None:
        headers = {"X-Fake-Interval": "1", "X-Fake-Chunks": "10"}
        response = self.successResultOf(self.treq.post("http://fake/api/chat", json={"model": "m"}, headers=headers))
        body = Protocol()
        response.deliverBody(body)
        self.clock.advance(1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        body.transport.stopProducing()  # the client hangs up
        self.treq.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.state.cancelled, self.state.in_flight), (1, 0))
