"""``flm keys``: an API's keys, their expiry, limits, budgets and rotation."""

from __future__ import annotations

import argparse
import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from flm.cli.client import AdminClient, UsageError
from flm.cli.commands import Handler, api_path, call, emit
from flm.cli.format import fields, short_time, table
from flm.cli.views import key_notice

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_NONE = ("none", "off", "never")
UNSET = argparse.SUPPRESS


def duration_s(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` (or plain seconds) as seconds."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration such as 30d, 12h or 90s: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def expiry(text: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
           ) -> str | None:
    """``--expires``: a duration from now (``30d``), an ISO time, or ``never``."""
    if text.strip().lower() in _NONE:
        return None
    try:
        seconds = duration_s(text)
    except argparse.ArgumentTypeError:
        try:  # an ISO time: the server checks its range and names the field
            datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a duration (30d, 12h, 90s...), an ISO 8601 time or never: {text!r}"
            ) from None
        return text
    try:
        at = now() + timedelta(seconds=seconds)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"too far in the future: {text!r}") from None
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def _limit(text: str) -> int | None:
    if text.strip().lower() in _NONE:
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1 or 'none': {text!r}")
    return int(text)


KEY_FIELDS = ("name", "expires_at", "rate_limit_rpm", "tpm_limit", "daily_token_budget",
              "monthly_token_budget")


def _options(create: bool) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    def opt(flag: str, dest: str, kind: Any, meta: str, help: str) -> Any:
        return (flag,), dict(dest=dest, type=kind, metavar=meta, default=UNSET,
                             help=help + (" (default: none)" if create else ""))
    return [
        opt("--expires", "expires_at", expiry, "WHEN",
            "30d, 12h... from now, an ISO 8601 time, or never"),
        opt("--rpm", "rate_limit_rpm", _limit, "N", "requests per minute, or none"),
        opt("--tpm", "tpm_limit", _limit, "N", "tokens per minute, or none"),
        opt("--daily-tokens", "daily_token_budget", _limit, "N",
            "tokens per UTC day, or none"),
        opt("--monthly-tokens", "monthly_token_budget", _limit, "N",
            "tokens per UTC month, or none"),
    ]


def _body(args: argparse.Namespace) -> dict[str, Any]:
    names = KEY_FIELDS if args.command == "create" else ("new_name", *KEY_FIELDS[1:])
    body = {("name" if n == "new_name" else n): getattr(args, n) for n in names
            if hasattr(args, n)}
    if args.command == "update" and not body:
        raise UsageError("keys update: give at least one field to change, e.g. --expires 30d")
    return body


def key_path(args: argparse.Namespace, suffix: str = "") -> str:
    key = getattr(args, "key", None)
    tail = "/keys" + ("/" + urllib.parse.quote(key, safe="") if key else "")
    return api_path(args, tail + suffix)


def _usage(key: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    usage = key.get("usage") or {}
    return usage.get("requests_today"), usage.get("tokens_today"), usage.get("tokens_month")


def keys_table(page: Mapping[str, Any]) -> str:
    items = page.get("items") or []
    if not items:
        return "No keys. Create one with: flm keys create API NAME"
    rows = [[k.get("name"), k.get("id"), k.get("status"), k.get("prefix"),
             short_time(k.get("expires_at")) if k.get("expires_at") else "never",
             short_time(k.get("last_used_at")) if k.get("last_used_at") else "never",
             *_usage(k)] for k in items]
    return table(["NAME", "ID", "STATUS", "PREFIX", "EXPIRES", "LAST USED", "REQ TODAY",
                  "TOKENS TODAY", "TOKENS MONTH"], rows)


def key_details(key: Mapping[str, Any]) -> str:
    requests, today, month = _usage(key)
    shown = [(k.replace("_", " "), v) for k, v in key.items() if k not in ("key", "usage")]
    return fields([*shown, ("requests today", requests), ("tokens today", today),
                   ("tokens this month", month)])


def key_created(key: Mapping[str, Any]) -> str:
    return f"Created key {key.get('name')} (id {key.get('id')}). Its secret:\n" + key_notice(
        key.get("key"))


def key_rotated(key: Mapping[str, Any]) -> str:
    grace = key.get("grace_until")
    old = (f"the old secret works until {short_time(grace)}" if grace
           else "the old secret no longer works")
    return f"New secret for key {key.get('name')} ({old}):\n" + key_notice(key.get("key"))


def keys_revoke(client: AdminClient, args: argparse.Namespace) -> int:
    data = client.request("DELETE", key_path(args)) or {"revoked": args.key}
    emit(args, data, lambda d, a: f"Revoked key {a.key} of API {a.api}: it no longer works.")
    return 0


API = (("api",), dict(help="the API's name or id"))
KEY = (("key",), dict(help="the key's name or id"))

# (command, help, arguments, handler), registered under the group ``keys``.
KEY_COMMANDS: list[tuple[str, str, list[Any], Handler]] = [
    ("list", "an API's keys, with today's usage", [API],
     call("GET", key_path, lambda d, a: keys_table(d))),
    ("create", "create a key and print its secret once", [
        API, (("name",), dict(help="unique in the API")), *_options(True)],
     call("POST", key_path, lambda d, a: key_created(d), body=_body)),
    ("show", "one key: status, limits, usage", [API, KEY],
     call("GET", key_path, lambda d, a: key_details(d))),
    ("update", "change a key's name, expiry or limits (at once)", [
        API, KEY, (("--name",), dict(dest="new_name", default=UNSET, help="a new name")),
        *_options(False)],
     call("PATCH", key_path, lambda d, a: key_details(d), body=_body)),
    ("revoke", "stop a key at once", [API, KEY], keys_revoke),
    ("rotate", "a new secret; the old one works for --grace", [
        API, KEY, (("--grace",), dict(dest="grace_s", type=duration_s, default=0,
                                      metavar="DURATION",
                                      help="how long the old secret keeps working, e.g. "
                                      "1h (default: 0, it stops at once)"))],
     call("POST", lambda a: key_path(a, "/rotate"), lambda d, a: key_rotated(d),
          body=lambda a: {"grace_s": a.grace_s})),
]
