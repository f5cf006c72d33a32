"""What every fake answer is made of: JSON, SSE and NDJSON framing, token counts, embeddings."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Callable

WORDS = ("Hello", " from", " the", " fake", " model", ".")
EMBED_DIM = 8


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def count_tokens(value: Any) -> int:
    """A rough word count of the text in a prompt, messages or content parts."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return count_tokens(value.get("content")) + count_tokens(value.get("text"))
    if isinstance(value, list):
        return sum(count_tokens(v) for v in value)
    return 0


def words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def embedding(text: Any) -> list[float]:
    digest = hashlib.sha256(repr(text).encode()).digest()
    return [b / 256.0 - 0.5 for b in digest[:EMBED_DIM]]  # exact in float32 too


def embed_inputs(value: Any) -> list[Any]:
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


class Reply:
    """What to send: a whole ``body``, or stream ``pieces`` then ``tail`` together."""

    def __init__(
        self,
        status: int = 200,
        content_type: bytes = b"application/json",
        body: bytes = b"",
        pieces: list[bytes] | None = None,
        tail: bytes = b"",
        interval: float = 0.0,
        on_tail: Callable[[], None] | None = None,
    ) -> None:
        self.on_tail = on_tail
        self.status = status
        self.content_type = content_type
        self.body = body
        self.pieces = pieces
        self.tail = tail
        self.interval = interval


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return dumps(obj) + b"\n"
