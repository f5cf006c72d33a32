"""OpenAI-shaped answers of the fake: completions (SSE or whole), embeddings, models, errors."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from tests.fakes.replies import Reply, count_tokens, dumps, embed_inputs, embedding, sse, words
from tests.fakes.state import FakeState


def openai_error(status: int, message: str, code: str | None = None) -> Reply:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(status, body=dumps(body))


def openai_usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_text(state: FakeState, path: str, body: dict[str, Any], n: int, interval: float) -> Reply:
    """``/v1/chat/completions`` and ``/v1/completions``."""
    chat = path == "/v1/chat/completions"
    model = body.get("model")
    prompt = count_tokens(body.get("messages") if chat else body.get("prompt"))
    created = int(time.time())
    if not body.get("stream"):
        def build() -> dict[str, Any]:
            text = "".join(words(n))
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            return {
                "id": "chatcmpl-fake" if chat else "cmpl-fake",
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [choice],
                "usage": openai_usage(prompt, n),
            }

        return Reply(body=state.cached((path, model, n, prompt), build))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base: dict[str, Any] = {
        "id": "chatcmpl-fake-stream" if chat else "cmpl-fake-stream",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(i: int, word: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": None}
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if i == 0 else {}
            if word is not None:
                delta["content"] = word
            choice["delta"] = delta
        else:
            choice["text"] = word or ""
        if word is None:
            choice["finish_reason"] = "stop"
        return sse({**base, "choices": [choice]})

    pieces = [chunk(i, w) for i, w in enumerate(words(n))]
    tail = chunk(n, None)
    if include_usage:
        tail += sse({**base, "choices": [], "usage": openai_usage(prompt, n)})
    tail += b"data: [DONE]\n\n"
    return Reply(content_type=b"text/event-stream", pieces=pieces, tail=tail, interval=interval)


def openai_embeddings(body: dict[str, Any]) -> Reply:
    inputs = embed_inputs(body.get("input"))
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(inputs):
        vector: Any = embedding(text)
        if b64:
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    prompt = max(1, count_tokens(inputs))
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return Reply(body=dumps({"object": "list", "data": data, "model": body.get("model"), "usage": usage}))


def openai_models(state: FakeState) -> Reply:
    data = [
        {"id": name, "object": "model", "created": 1727784000, "owned_by": "library"}
        for name in state.models
    ]
    return Reply(body=dumps({"object": "list", "data": data}))


# -- Ollama ------------------------------------------------------------------------------
