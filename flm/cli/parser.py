"""The command line: every command's arguments, the table of commands, the parser."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from flm import __version__
from flm.cli import views
from flm.cli.client import UsageError
from flm.cli.commands import Handler, api_path, apis_delete, apis_list, call, status
from flm.cli.backends import BACKEND_COMMANDS
from flm.cli.db import DB_COMMANDS
from flm.cli.keys import KEY_COMMANDS
from flm.cli.logs import logs
from flm.cli.models import models_pull, models_rm

DEFAULT_URL = "http://127.0.0.1:8420"

# -- arguments -----------------------------------------------------------------

Arg = tuple[tuple[str, ...], dict[str, Any]]
UNSET = argparse.SUPPRESS  # an option not given leaves no attribute: left out of bodies


def _arg(*names: str, **options: Any) -> Arg:
    return names, options


def _number(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return int(value) if value.is_integer() else value


def _whole(text: str, minimum: int = 0) -> int:
    if not text.isdigit() or int(text) < minimum:
        raise argparse.ArgumentTypeError(f"not a whole number >= {minimum}: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    return _whole(text, 1)


def _rpm(text: str) -> int | None:
    return None if text.lower() in ("none", "off", "0") else _positive(text)


def _field(flag: str, dest: str, kind: Callable[[str], Any], meta: str, help: str) -> Arg:
    return _arg(flag, dest=dest, type=kind, metavar=meta, default=UNSET, help=help)


API = _arg("api", help="the API's name or id")
MODEL = _arg("name", help="a model name, e.g. llama3.2:1b")
def _limits(create: bool) -> list[Arg]:
    """The API fields as options; ``apis update`` shows no defaults (it changes only what
    is given)."""
    def help(text: str, default: str) -> str:
        return f"{text} ({default})" if create else text
    return [
        _field("--host", "host", str, "IP", help("address to listen on; beyond loopback it "
               "serves HTTPS unless --plain-http", "the service's api_host")),
        _field("--port", "port", _positive, "P", help("TCP port", "default: the first free "
               "one from 8080")),
        _field("--max-concurrent", "max_concurrent", _positive, "N", help("at the backend at "
               "once", "1")),
        _field("--max-queue", "max_queue", _whole, "N", help("requests that may wait", "32")),
        _field("--queue-timeout", "queue_timeout_s", _number, "S", help("seconds one may "
               "wait", "60")),
        _field("--upstream-timeout", "upstream_timeout_s", _number, "S", help("seconds for "
               "the backend", "300")),
        _field("--rate-limit-rpm", "rate_limit_rpm", _rpm, "N", help("per minute, or 'none'",
               "none")),
        _field("--priority", "priority", int, "N", help("higher goes first when the backend "
               "is busy", "0")),
        _field("--tls-cert", "tls_cert", str, "PATH", help("PEM certificate for HTTPS on this "
               "API", "the service's tls_cert")),
        _field("--tls-key", "tls_key", str, "PATH", help("PEM private key for HTTPS on this "
               "API", "the service's tls_key")),
        _arg("--plain-http", dest="insecure", action="store_true", default=UNSET,
             help="serve plain HTTP even beyond loopback (the API's insecure field)"),
        _arg("--allow-unknown-model", action="store_true", default=UNSET,
             help="accept a model the backend does not list"),
    ]  # fmt: skip


BODY_FIELDS = ("name", "model", "host", "port", "max_concurrent", "max_queue", "queue_timeout_s",
               "upstream_timeout_s", "rate_limit_rpm", "priority", "start",
               "allow_unknown_model", "insecure", "tls_cert", "tls_key")  # fmt: skip


def _api_body(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in BODY_FIELDS if hasattr(args, name)}


def _patch_body(args: argparse.Namespace) -> dict[str, Any]:
    body = _api_body(args)
    if not body:
        raise UsageError("apis update: give at least one field to change, e.g. --model M")
    return body


# -- the command table -------------------------------------------------------------


def _state_change(action: str) -> Handler:
    return call("POST", lambda a: api_path(a, "/" + action),
                 lambda d, a: views.api_state(d, f"API {a.api}: {action} done."))  # fmt: skip


# (group, command or None, help, arguments, handler)
COMMANDS: list[tuple[str, str | None, str, list[Arg], Handler]] = [
    ("status", None, "service health and load", [], status),
    ("apis", "list", "list APIs", [
        _arg("--status", choices=["running", "stopped", "error"]),
        _arg("--limit", type=_positive, metavar="N", help="at most N (default: all)")],
     apis_list),
    ("apis", "create", "create an API and print its key", [
        _arg("name", help="a unique name"),
        _arg("--model", required=True, help="a model the backend serves"), *_limits(True),
        _arg("--no-start", dest="start", action="store_false", default=UNSET,
             help="create it stopped")],
     call("POST", lambda a: "/api/apis", lambda d, a: views.api_created(d), body=_api_body)),
    ("apis", "show", "show one API", [API],
     call("GET", api_path, lambda d, a: views.api_details(d))),
    ("apis", "update", "change some of an API's fields", [
        API, _arg("--name", default=UNSET, help="a new name"),
        _arg("--model", default=UNSET, help="a new model"), *_limits(False)],
     call("PATCH", api_path, lambda d, a: views.api_details(d), body=_patch_body)),
    ("apis", "delete", "stop and delete an API, its logs and metrics", [API],
     apis_delete),
    ("apis", "start", "open an API's port", [API], _state_change("start")),
    ("apis", "stop", "close an API's port", [API], _state_change("stop")),
    ("apis", "rotate-key", "replace an API's key", [API],
     call("POST", lambda a: api_path(a, "/rotate-key"), lambda d, a: views.api_key_rotated(d))),
    ("logs", None, "an API's request log, oldest first", [
        API, _arg("--limit", type=_positive, metavar="N", help="rows (default: the server's)"),
        _arg("--status", help="a status code (500) or class (5xx)"),
        _arg("--since", metavar="ISO", help="ISO 8601 time: rows from then"),
        _arg("--until", metavar="ISO", help="ISO 8601 time: rows before then"),
        _arg("-f", "--follow", action="store_true", help="print new rows as they come")],
     logs),
    ("metrics", None, "an API's per-minute metrics", [
        API, _arg("--since", metavar="ISO", help="ISO 8601 time (default: 24 hours ago)"),
        _arg("--until", metavar="ISO", help="ISO 8601 time (default: now)")],
     call("GET", lambda a: api_path(a, "/metrics"), lambda d, a: views.metrics_table(d),
           query=lambda a: {"since": a.since, "until": a.until})),
    *[("keys", command, help_text, arguments, handler)
      for command, help_text, arguments, handler in KEY_COMMANDS],
    *[("backends", command, help_text, arguments, handler)
      for command, help_text, arguments, handler in BACKEND_COMMANDS],
    *[("db", command, help_text, arguments, handler)
      for command, help_text, arguments, handler in DB_COMMANDS],
    ("nodes", "list", "the FLM processes sharing the database", [],
     call("GET", lambda a: "/api/nodes", lambda d, a: views.nodes_table(d))),
    ("models", "list", "the backend's models", [],
     call("GET", lambda a: "/api/models", lambda d, a: views.models_table(d))),
    ("models", "pull", "download a model, showing progress", [MODEL], models_pull),
    ("models", "rm", "delete a model from the backend", [
        MODEL, _arg("--force", action="store_true", help="even if an API uses it")],
     models_rm),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``flm`` argument parser, built from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="flm", description="Manage an FLM gateway.")
    parser.add_argument("--url", help=f"admin API (default: $FLM_URL or {DEFAULT_URL})")
    parser.add_argument("--token", help="admin token (default: $FLM_ADMIN_TOKEN, else the file)")
    parser.add_argument("--data-dir", help="where admin-token is (default: $FLM_DATA_DIR "
                        "or ~/.local/share/flm)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")
    parser.add_argument("--insecure", dest="insecure_url", action="store_true",
                        help="allow a plain http:// admin URL beyond loopback (the token "
                        "crosses the network unencrypted)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    parser.add_argument("--version", action="version", version=f"flm {__version__}")
    leaf_common = argparse.ArgumentParser(add_help=False)
    leaf_common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                             help="print the raw JSON answer")  # fmt: skip
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    commands: dict[str, argparse._SubParsersAction] = {}  # type: ignore[type-arg]
    for group, command, help_text, arguments, handler in COMMANDS:
        if command is None:
            leaf = groups.add_parser(group, help=help_text, parents=[leaf_common])
        else:
            if group not in commands:
                sub = groups.add_parser(group, help=f"{group} commands")
                commands[group] = sub.add_subparsers(dest="command", metavar="COMMAND",
                                                     required=True)  # fmt: skip
            leaf = commands[group].add_parser(command, help=help_text, parents=[leaf_common])
        for names, options in arguments:
            leaf.add_argument(*names, **options)
        leaf.set_defaults(handler=handler)
    return parser
