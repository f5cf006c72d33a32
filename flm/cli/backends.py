"""``flm backends``: the model servers FLM routes to (list, add, show, update, remove)."""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Mapping
from typing import Any

from flm.cli.client import AdminClient, UsageError
from flm.cli.commands import Handler, call, emit
from flm.cli.format import fields, short_time, table

UNSET = argparse.SUPPRESS
FIELDS = ("url", "kind", "max_concurrent", "weight", "enabled")


def backend_path(args: argparse.Namespace) -> str:
    name = getattr(args, "name", None)
    return "/api/backends" + ("/" + urllib.parse.quote(name, safe="") if name else "")


def _enabled(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"not true or false: {text!r}")


def _body(args: argparse.Namespace) -> dict[str, Any]:
    # "url" is the admin API's (--url): the backend's is backend_url.
    body = {n: getattr(args, n) for n in FIELDS[1:] if hasattr(args, n)}
    if hasattr(args, "backend_url"):
        body["url"] = args.backend_url
    if args.command == "add":
        body["name"] = args.name
    elif not body:
        raise UsageError("backends update: give at least one field to change, e.g. --weight 2")
    return body


def backends_table(page: Mapping[str, Any]) -> str:
    items = page.get("items") or []
    if not items:
        return "No backends."
    rows = [[b.get("name"), b.get("kind"), b.get("url"), b.get("state"),
             "yes" if b.get("enabled") else "no",
             f"{b.get('in_flight')}/{b.get('max_concurrent')}", b.get("waiting"),
             b.get("weight"), len(b.get("models") or []), b.get("last_error") or ""]
            for b in items]
    return table(["NAME", "KIND", "URL", "STATE", "ENABLED", "IN FLIGHT", "WAITING",
                  "WEIGHT", "MODELS", "LAST ERROR"], rows)


def backend_details(b: Mapping[str, Any]) -> str:
    shown = [(k.replace("_", " "), short_time(v) if k.endswith("_at") and v else v)
             for k, v in b.items() if k != "models"]
    return fields([*shown, ("models", ", ".join(b.get("models") or []) or "(none listed)")])


def backends_remove(client: AdminClient, args: argparse.Namespace) -> int:
    data = client.request("DELETE", backend_path(args)) or {"removed": args.name}
    emit(args, data, lambda d, a: f"Removed backend {a.name}.")
    return 0


def _options(add: bool) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    return [
        (("--kind",), dict(choices=("ollama", "openai"), default=UNSET,
                           help="ollama or openai" + (" (default: ollama)" if add else ""))),
        (("--max-concurrent",), dict(dest="max_concurrent", type=int, default=UNSET,
                                     metavar="N", help="requests at it at once")),
        (("--weight",), dict(type=int, default=UNSET, metavar="N",
                             help="preferred among equally loaded backends (default 1)")),
        (("--enabled",), dict(type=_enabled, default=UNSET, metavar="true|false",
                              help="whether requests may go to it")),
    ]


NAME = (("name",), dict(help="the backend's name"))

# (command, help, arguments, handler), registered under the group ``backends``.
BACKEND_COMMANDS: list[tuple[str, str, list[Any], Handler]] = [
    ("list", "every backend: state, load, models", [],
     call("GET", backend_path, lambda d, a: backends_table(d))),
    ("add", "add a model server", [
        NAME, (("backend_url",), dict(metavar="url",
                                      help="e.g. http://10.0.0.5:11434 or http://host:8000/v1")),
        *_options(True)],
     call("POST", lambda a: "/api/backends", lambda d, a: backend_details(d), body=_body)),
    ("show", "one backend", [NAME], call("GET", backend_path,
                                         lambda d, a: backend_details(d))),
    ("update", "change a backend (at once)", [
        NAME, (("--backend-url",), dict(dest="backend_url", default=UNSET, metavar="URL",
                                        help="a new URL")), *_options(False)],
     call("PATCH", backend_path, lambda d, a: backend_details(d), body=_body)),
    ("remove", "remove a backend (refused while an API depends on it alone)", [NAME],
     backends_remove),
]
