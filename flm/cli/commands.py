"""Command handlers ``(client, args) -> exit code``: most are one request and a
view; here the generic one, ``status`` and the ``apis`` commands that need more."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

from flm.cli import views
from flm.cli.client import AdminClient, CliError

PAGE_SIZE = 500  # the admin API's maximum ``limit``

Handler = Callable[[AdminClient, argparse.Namespace], int]
Show = Callable[[Any, argparse.Namespace], str]


def emit(args: argparse.Namespace, data: Any, show: Show) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(show(data, args))


def call(
    method: str,
    path: Callable[[argparse.Namespace], str],
    show: Show,
    body: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
    query: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> Handler:
    """A command that is one request and a formatter."""

    def handler(client: AdminClient, args: argparse.Namespace) -> int:
        data = client.request(
            method,
            path(args),
            query=query(args) if query else None,
            body=body(args) if body else None,
        )
        emit(args, data, show)
        return 0

    return handler


def status(client: AdminClient, args: argparse.Namespace) -> int:
    health = client.request("GET", "/health", also_ok=(503,)) or {}
    try:
        system = client.request("GET", "/api/system")
    except CliError:
        if not args.json:
            print(views.status_text(client.url, health, None))
        raise
    both = {"health": health, "system": system}
    emit(args, both, lambda d, a: views.status_text(client.url, health, system))
    return 0 if health.get("status") == "ok" else 1


def _collect(client: AdminClient, query: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """``GET /api/apis`` page after page: at most ``limit`` items, or all of them."""
    items: list[Any] = []
    cursor, total, seen = None, None, set()
    while limit is None or len(items) < limit:
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(items))
        page = client.request("GET", "/api/apis", query={"limit": size, **query, "cursor": cursor})
        items += page.get("items") or []
        total, cursor = page.get("total"), page.get("next_cursor")
        if not cursor:
            break
        if cursor in seen:
            raise CliError("the admin API returned the same page cursor twice")
        seen.add(cursor)
    return {"items": items[:limit], "next_cursor": cursor, "total": total}


def apis_list(client: AdminClient, args: argparse.Namespace) -> int:
    page = _collect(client, {"status": args.status}, args.limit)
    emit(args, page, lambda d, a: views.api_list(d))
    return 0


def apis_delete(client: AdminClient, args: argparse.Namespace) -> int:
    client.request("DELETE", api_path(args))  # 204, no body
    emit(args, {"deleted": args.api}, lambda d, a: f"Deleted API {a.api}.")
    return 0


def api_path(args: argparse.Namespace, suffix: str = "") -> str:
    """``/api/apis/{name or id}{suffix}``, the name quoted."""
    return "/api/apis/" + urllib.parse.quote(args.api, safe="") + suffix
