"""OpenAI-shaped errors, as model clients expect them: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import json

# code -> (HTTP status, OpenAI error type)
ERRORS: dict[str, tuple[int, str]] = {
    "invalid_api_key": (401, "invalid_request_error"),
    "key_expired": (401, "invalid_request_error"),
    "invalid_json": (400, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "model_not_found": (404, "invalid_request_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "queue_full": (429, "rate_limit_error"),
    "rate_limited": (429, "rate_limit_error"),
    "token_rate_limited": (429, "rate_limit_error"),
    "budget_exceeded": (429, "rate_limit_error"),
    "queue_timeout": (503, "server_error"),
    "api_unavailable": (503, "server_error"),
    "shutting_down": (503, "server_error"),
    "backend_unavailable": (502, "server_error"),
    "backend_error": (502, "server_error"),
    "backend_timeout": (504, "server_error"),
}


def error_json(code: str, message: str) -> bytes:
    kind = ERRORS[code][1] if code in ERRORS else "invalid_request_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code}}, separators=(",", ":")).encode()


def error_body(code: str, message: str, status: int | None = None) -> tuple[int, bytes]:
    """(status, body) for an error code of the contract (``status`` overrides the code's)."""
    return status or ERRORS[code][0], error_json(code, message)


INVALID_KEY_MESSAGE = "Invalid API key. Send 'Authorization: Bearer <key>' with this API's key."
INVALID_KEY = error_body("invalid_api_key", INVALID_KEY_MESSAGE)
KEY_EXPIRED = error_body("key_expired", "This API key has expired; ask for a new one.")
