"""The admin API's one error shape: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest


def json_body(request: IRequest, status: int, payload: Any) -> bytes:
    """Set status and content type, and return ``payload`` as JSON bytes."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload, separators=(",", ":")).encode()


def error(request: IRequest, status: int, code: str, message: str) -> bytes:
    """An admin error in the contract's shape; never a stack trace."""
    return json_body(request, status, {"error": {"code": code, "message": message}})


class AdminError(Exception):
    """Raised inside a route; the app turns it into :func:`error`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
