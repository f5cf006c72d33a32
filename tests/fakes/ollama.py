"""Ollama-shaped answers of the fake: chat/generate (NDJSON or whole), embed, show, pull, delete, tags."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.fakes.replies import Reply, count_tokens, dumps, embed_inputs, embedding, ndjson, now_iso, words
from tests.fakes.state import FakeState, model_entry, normalize_model

PULL_LAYERS = (2_000_000, 7_000, 485)
PULL_STEPS = 4


def ollama_error(status: int, message: str) -> Reply:
    return Reply(status, body=dumps({"error": message}))


# -- OpenAI ------------------------------------------------------------------------------


def ollama_done(model: Any, prompt: int, n: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "stop",
        "total_duration": 123_456_789,
        "load_duration": 1_234_567,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 2_345_678,
        "eval_count": n,
        "eval_duration": 98_765_432,
    }


def ollama_text(state: FakeState, path: str, body: dict[str, Any], n: int, interval: float) -> Reply:
    """``/api/chat`` and ``/api/generate``; NDJSON unless ``"stream": false``."""
    chat = path == "/api/chat"
    model = body.get("model")
    prompt = max(1, count_tokens(body.get("messages") if chat else body.get("prompt")))

    def content(text: str) -> dict[str, Any]:
        if chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    final_extra: dict[str, Any] = {} if chat else {"context": [1, 2, 3]}
    if body.get("stream", True) is False:
        def build() -> dict[str, Any]:
            head = {"model": model, "created_at": now_iso(), **content("".join(words(n)))}
            return {**head, **ollama_done(model, prompt, n), **final_extra}

        return Reply(body=state.cached((path, model, n, prompt), build))
    created = now_iso()
    pieces = [
        ndjson({"model": model, "created_at": created, **content(w), "done": False}) for w in words(n)
    ]
    tail = ndjson({"model": model, "created_at": created, **content(""), **ollama_done(model, prompt, n), **final_extra})
    return Reply(content_type=b"application/x-ndjson", pieces=pieces, tail=tail, interval=interval)


def ollama_embed(body: dict[str, Any]) -> Reply:
    inputs = embed_inputs(body.get("input"))
    return Reply(body=dumps({
        "model": body.get("model"),
        "embeddings": [embedding(t) for t in inputs],
        "total_duration": 14_143_917,
        "load_duration": 1_019_500,
        "prompt_eval_count": max(1, count_tokens(inputs)),
    }))


def ollama_show(state: FakeState, body: dict[str, Any]) -> Reply:
    name = str(body.get("model") or body.get("name") or "")
    entry = state.models.get(normalize_model(name))
    if entry is None:
        return ollama_error(404, f"model '{name}' not found")
    return Reply(body=dumps({
        "modelfile": f"FROM {name}\n",
        "parameters": "stop \"<|eot_id|>\"",
        "template": "{{ .Prompt }}",
        "details": entry["details"],
        "model_info": {"general.architecture": entry["details"]["family"]},
        "capabilities": ["embedding"] if "embed" in name else ["completion"],
        "modified_at": entry["modified_at"],
    }))


def ollama_delete(state: FakeState, body: dict[str, Any]) -> Reply:
    name = str(body.get("model") or body.get("name") or "")
    if state.models.pop(normalize_model(name), None) is None:
        return ollama_error(404, f"model '{name}' not found")
    return Reply(body=b"")


def ollama_pull(state: FakeState, body: dict[str, Any]) -> Reply:
    name = str(body.get("model") or body.get("name") or "")
    interval = float(state.config.get("pull_interval") or 0.0)
    lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
    ok = bool(name) and "missing" not in name
    if ok:
        for i, total in enumerate(PULL_LAYERS):
            digest = hashlib.sha256(f"{name}/{i}".encode()).hexdigest()
            for step in range(PULL_STEPS + 1):
                lines.append({
                    "status": f"pulling {digest[:12]}",
                    "digest": f"sha256:{digest}",
                    "total": total,
                    "completed": total * step // PULL_STEPS,
                })
        lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
    final = {"status": "success"} if ok else {"error": "pull model manifest: file does not exist"}

    def on_done() -> None:
        if ok:
            state.models[normalize_model(name)] = model_entry(normalize_model(name))

    if body.get("stream", True) is False:
        if not ok:
            return ollama_error(500, final["error"])
        on_done()
        return Reply(body=dumps(final))
    return Reply(content_type=b"application/x-ndjson", pieces=[ndjson(x) for x in lines],
                 tail=ndjson(final), interval=interval, on_tail=on_done)


def ollama_tags(state: FakeState) -> Reply:
    return Reply(body=dumps({"models": list(state.models.values())}))


# -- dispatch ----------------------------------------------------------------------------
