"""The real ``openai`` and ``ollama`` clients against a running API of ``twistd flm``."""

from __future__ import annotations

import time
from typing import Any

import ollama
import openai

from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.fakes.backend import FakeProcess

MESSAGES = [{"role": "user", "content": "say hello"}]


def openai_client(api: dict[str, Any], **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_url(api)}/v1", api_key=api["key"], max_retries=0, timeout=10, **kwargs)


def ollama_client(api: dict[str, Any], **headers: str) -> ollama.Client:
    return ollama.Client(host=api_url(api), headers={"Authorization": f"Bearer {api['key']}", **headers}, timeout=10)


def seen(fake: FakeProcess, path: str) -> dict[str, Any]:
    """What the fake received last on ``path``."""
    record = fake.stats()["last_by_path"].get(path)
    assert record is not None, f"the fake never saw {path}"
    return record  # type: ignore[no-any-return]


def assert_forwarded_cleanly(record: dict[str, Any], api: dict[str, Any]) -> None:
    assert record["json"]["model"] == api["model"], record["json"]
    assert "authorization" not in record["headers"], record["headers"]
    assert not any(api["key"] in value for value in record["headers"].values())


def test_openai_chat_completion(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(model="qwen2.5:0.5b")
    reply = openai_client(api).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert reply.choices[0].message.content == "Hello from the"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert_forwarded_cleanly(seen(fake, "/v1/chat/completions"), api)


def test_openai_chat_streaming_with_and_without_usage(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    client = openai_client(api)
    chunks = list(client.chat.completions.create(
        model="whatever", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert_forwarded_cleanly(seen(fake, "/v1/chat/completions"), api)

    plain = list(client.chat.completions.create(model="whatever", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == "Hello from the"
    # FLM may ask the backend for usage, but the client did not: it must not see the extra chunk.
    assert all(c.choices and c.usage is None for c in plain), [c.model_dump() for c in plain[-2:]]


def test_openai_completions_and_embeddings(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api(model="nomic-embed-text:latest")
    client = openai_client(api)
    assert client.completions.create(model="x", prompt="say").choices[0].text == "Hello from the"
    assert_forwarded_cleanly(seen(fake, "/v1/completions"), api)
    emb = client.embeddings.create(model="x", input=["a", "b"])
    assert [len(d.embedding) for d in emb.data] == [8, 8]
    assert_forwarded_cleanly(seen(fake, "/v1/embeddings"), api)
    assert [m.id for m in client.models.list()] == [api["model"]]


def test_ollama_chat_generate_embed(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    client = ollama_client(api)
    reply = client.chat(model="other", messages=MESSAGES, stream=False)
    assert reply.message.content == "Hello from the" and reply.done
    assert_forwarded_cleanly(seen(fake, "/api/chat"), api)
    parts = list(client.chat(model="other", messages=MESSAGES, stream=True))
    assert [p.done for p in parts] == [False, False, False, True] and parts[-1].eval_count == 3
    assert "".join(p.message.content or "" for p in parts) == "Hello from the"

    assert client.generate(model="other", prompt="hi", stream=False).response == "Hello from the"
    assert_forwarded_cleanly(seen(fake, "/api/generate"), api)
    streamed = list(client.generate(model="other", prompt="hi", stream=True))
    assert "".join(p.response or "" for p in streamed) == "Hello from the" and streamed[-1].done

    assert len(client.embed(model="other", input=["x", "y"]).embeddings) == 2
    assert_forwarded_cleanly(seen(fake, "/api/embed"), api)


def test_stream_chunks_arrive_as_sent(gateway: Gateway, fake: FakeProcess) -> None:
    """5 chunks 0.3 s apart at the fake reach the client spread out, not in one burst."""
    api = gateway.create_api()
    client = openai_client(api)
    started = time.monotonic()
    arrivals = []
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True,
        extra_headers={"X-Fake-Chunks": "5", "X-Fake-Interval": "0.3"},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    # The fake sends the last content chunk ~1.2 s after the first.
    assert arrivals[-1] - arrivals[0] >= 1.0, [round(a - started, 3) for a in arrivals]
    assert arrivals[0] - started < 0.8, [round(a - started, 3) for a in arrivals]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 0.15, gaps


def test_ollama_ndjson_stream_arrives_as_sent(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    client = ollama_client(api, **{"X-Fake-Chunks": "4", "X-Fake-Interval": "0.3"})
    started = time.monotonic()
    arrivals = [time.monotonic() for part in client.generate(model="m", prompt="hi", stream=True) if not part.done]
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] >= 0.7 and arrivals[0] - started < 0.8


def wait_cancelled(fake: FakeProcess, count: int = 1) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := fake.stats())["cancelled"] >= count and s["in_flight"] == 0 and s,
        5, f"the fake to see {count} cancelled request(s) and none in flight",
    )


def test_client_disconnect_mid_stream_cancels_upstream(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    client = openai_client(api)
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True,
        extra_headers={"X-Fake-Chunks": "100", "X-Fake-Interval": "0.1"},
    )
    got = []
    for chunk in stream:
        got.append(chunk)
        if len(got) == 2:
            break
    stream.close()
    stats = wait_cancelled(fake)
    assert stats["cancelled"] == 1 and stats["in_flight"] == 0
    # The API still answers afterwards.
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices


def test_client_disconnect_before_headers_cancels_upstream(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    client = openai_client(api)
    started = time.monotonic()
    try:
        client.with_options(timeout=0.5).chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"X-Fake-Fail": "stall"},
        )
    except openai.APITimeoutError:
        pass
    else:
        raise AssertionError("a stalled backend answered")
    assert time.monotonic() - started < 3
    stats = wait_cancelled(fake)
    assert stats["cancelled"] == 1 and stats["in_flight"] == 0
