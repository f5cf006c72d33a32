"""Admin payloads checked field by field; every rejection names the field."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from typing import Any, Callable

from flm.admin.errors import AdminError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
MODEL = re.compile(r"^[^\x00-\x1f\x7f\ud800-\udfff]{1,200}$")  # no lone surrogates: unstorable
STATUSES = ("running", "stopped", "error")

# The API fields a client may set, with their defaults on create.
DEFAULTS: dict[str, Any] = {
    "max_concurrent": 1, "max_queue": 32, "queue_timeout_s": 60.0,
    "upstream_timeout_s": 300.0, "rate_limit_rpm": None, "priority": 0,
    "allow_unknown_model": False, "insecure": False, "tls_cert": None, "tls_key": None,
    "backends": None, "affinity": None,
}


def invalid(field: str, message: str) -> AdminError:
    return AdminError(422, "invalid_field", f"{field}: {message}")


def _int(lo: int, hi: int, nullable: bool = False) -> Callable[[str, Any], Any]:
    def check(field: str, value: Any) -> Any:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise invalid(field, f"must be an integer from {lo} to {hi}"
                          + (" or null" if nullable else ""))
        return value
    return check


def _seconds(lo: float, hi: float) -> Callable[[str, Any], Any]:
    def check(field: str, value: Any) -> Any:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not lo < value <= hi):
            raise invalid(field, f"must be a number of seconds over {lo:g}, at most {hi:g}")
        return float(value)
    return check


def _bool(field: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise invalid(field, "must be true or false")
    return value


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str, Any], Any]:
    def check(field: str, value: Any) -> Any:
        if not isinstance(value, str) or not regex.match(value):
            raise invalid(field, what)
        return value
    return check


def _host(field: str, value: Any) -> Any:
    try:
        if not isinstance(value, str):  # ip_address(5) is 0.0.0.5
            raise TypeError
        return str(ipaddress.ip_address(value))
    except (TypeError, ValueError):
        raise invalid(field, "must be an IP address such as 127.0.0.1 or ::1") from None


def _path(field: str, value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 4096 or "\x00" in value:
        raise invalid(field, "must be the path of a PEM file, or null")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, "must be the path of a PEM file, or null") from None
    return value


def _backends(field: str, value: Any) -> Any:
    """A list of backend names (checked against the backends by the caller), or null."""
    if value is None:
        return None
    if (not isinstance(value, list) or not 1 <= len(value) <= 64
            or not all(isinstance(v, str) and NAME.match(v) for v in value)):
        raise invalid(field, "must be a list of 1-64 backend names, or null (every backend "
                             "that lists the model)")
    return tuple(dict.fromkeys(value))


def _affinity(field: str, value: Any) -> Any:
    if value not in (None, "user"):
        raise invalid(field, "must be null or 'user'")
    return value


def _status(field: str, value: Any) -> Any:
    if value not in ("running", "stopped"):
        raise invalid(field, "must be 'running' or 'stopped'")
    return value


FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "name": _pattern(NAME, "must start with a letter and hold 1-64 letters, digits, '.', '_' "
                           "or '-'"),
    "model": _pattern(MODEL, "must be a model name of 1-200 printable characters"),
    "host": _host,
    "port": _int(1, 65535),
    "max_concurrent": _int(1, 1024),
    "max_queue": _int(0, 100_000),
    "queue_timeout_s": _seconds(0, 86_400),
    "upstream_timeout_s": _seconds(0, 86_400),
    "rate_limit_rpm": _int(1, 1_000_000, nullable=True),
    "priority": _int(-100, 100),
    "allow_unknown_model": _bool,
    "insecure": _bool,
    "tls_cert": _path,
    "tls_key": _path,
    "backends": _backends,
    "affinity": _affinity,
}
CREATE_ONLY = {"start": _bool}
UPDATE_ONLY = {"status": _status}


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body, parse_constant=lambda c: _bad_constant(c))
    except (ValueError, RecursionError) as e:
        raise AdminError(400, "invalid_json", f"The body is not valid JSON: {str(e)[:200]}") \
            from None
    if not isinstance(value, dict):
        raise AdminError(422, "invalid_body", "The body must be a JSON object.")
    return value


def optional_json(request: Any) -> dict[str, Any]:
    """A body that may be left out (``{}``); when given, JSON as everywhere."""
    body = request.content.read()
    return parse_json(body) if body.strip() else {}


def unknown_field(field: object) -> AdminError:
    return AdminError(422, "unknown_field", f"{str(field)[:64]}: unknown field")


def no_fields(payload: dict[str, Any]) -> None:
    """An action (start, stop, delete) takes no fields: a body, if any, is ``{}``."""
    for field in payload:
        raise unknown_field(field)


def _bad_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _check(payload: dict[str, Any], allowed: dict[str, Callable[[str, Any], Any]]
           ) -> dict[str, Any]:
    out = {}
    for field, value in payload.items():
        if field == "id":
            raise invalid("id", "cannot be changed")
        check = allowed.get(field)
        if check is None:
            raise unknown_field(field)
        out[field] = check(field, value)
    return out


def validate_create(payload: dict[str, Any]) -> dict[str, Any]:
    fields = _check(payload, {**FIELDS, **CREATE_ONLY})
    for required in ("name", "model"):
        if required not in fields:
            raise invalid(required, "is required")
    return {**DEFAULTS, "start": True, **fields}


def validate_update(payload: dict[str, Any]) -> dict[str, Any]:
    return _check(payload, {**FIELDS, **UPDATE_ONLY})


def page_limit(args: dict[bytes, list[bytes]], default: int = 50, most: int = 500) -> int:
    raw = args.get(b"limit", [b""])[0]
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= most:
        raise invalid("limit", f"must be an integer from 1 to {most}")
    return int(raw)


def encode_cursor(tag: bytes, last_id: int) -> str:
    """An opaque keyset cursor: which list it belongs to (``tag``) and the last id seen."""
    return base64.urlsafe_b64encode(tag + b"%d" % last_id).decode().rstrip("=")


def decode_cursor(tag: bytes, cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if raw[:1] != tag or not raw[1:].isdigit() or len(raw) > 20:
            raise ValueError
        last_id = int(raw[1:])
        if last_id >= 2**63:  # past SQLite's integers: an OverflowError, not a 422
            raise ValueError
        return last_id
    except (ValueError, binascii.Error):
        raise invalid("cursor", "is not a cursor this server gave out") from None
