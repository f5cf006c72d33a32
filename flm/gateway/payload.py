"""What an API forwards: the routes, and the request body rewritten for the backend."""

from __future__ import annotations

import json

from flm.gateway.relay import UsageChunkFilter
from flm.http.client import BytesBody

__all__ = ["ROUTES", "BytesBody", "rewrite"]

# path -> (streams unless told otherwise, takes stream_options.include_usage)
ROUTES: dict[bytes, tuple[bool, bool]] = {
    b"/v1/chat/completions": (False, True),
    b"/v1/completions": (False, True),
    b"/v1/embeddings": (False, False),
    b"/api/chat": (True, False),
    b"/api/generate": (True, False),
    b"/api/embed": (False, False),
}



def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# One decoder: ``json.loads`` with an argument builds a new one for every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ASK_USAGE = b'"stream_options":{"include_usage":true},'


def rewrite(raw: bytes, model: str, streams_by_default: bool, takes_usage: bool
            ) -> tuple[bytes, UsageChunkFilter | None, str | None]:
    """The body to send upstream: ``model`` set, usage asked for on OpenAI streams; and
    the OpenAI ``user`` field, for affinity (the body is parsed here, once).

    Its own function so the parsed tree is gone once it returns: a queued request holds
    only the bytes (a 13.8 MiB body parsed is several times that in objects).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode(json.detect_encoding(raw))  # UTF-16/32, as json.loads reads it
    payload = _DECODER.decode(text.removeprefix("\ufeff"))
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    # The client's bytes go on as they are when nothing changes (the usual case): one
    # "model" key, already the API's (a second one, or one spelled with an escape, could
    # name another model to a backend that keeps the first); UTF-8 without a BOM; no
    # escapes (a lone surrogate is refused when the body is written anew).
    same = (payload.get("model") == model and raw.count(b'"model"') == 1
            and b"\\u" not in raw and raw[:1] != b"\xef")
    payload["model"] = model
    usage_filter = None
    if takes_usage and payload.get("stream", streams_by_default) is True:
        options = payload.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            usage_filter = UsageChunkFilter()
            if options is None and same and b'"stream_options"' not in raw:
                # Only the option to add: spliced in after the "{" (the object has keys).
                at = raw.index(b"{") + 1
                raw = raw[:at] + _ASK_USAGE + raw[at:]
            else:
                options = dict(options) if isinstance(options, dict) else {}
                options["include_usage"] = True
                payload["stream_options"] = options
                same = False
    user = payload.get("user")
    body = raw if same else json.dumps(payload, ensure_ascii=False,
                                       separators=(",", ":")).encode()
    return body, usage_filter, user if isinstance(user, str) and user else None
