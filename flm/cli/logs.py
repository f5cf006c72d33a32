"""``flm logs``: one page of an API's request log, or ``--follow`` it."""

from __future__ import annotations

import argparse
import json
from time import sleep
from typing import Any

from flm.cli import views
from flm.cli.client import AdminClient
from flm.cli.commands import api_path


def logs(client: AdminClient, args: argparse.Namespace) -> int:
    path = api_path(args, "/logs")
    page = client.request(
        "GET", path, query={"limit": args.limit, "status": args.status, "since": args.since,
                            "until": args.until}
    )
    if args.json and not args.follow:
        print(json.dumps(page, indent=2))
        return 0
    rows = sorted(page.get("items") or [], key=lambda r: r["id"])
    if not rows and not args.follow and not args.json:
        print("No log rows.")
        return 0
    if not args.json:
        print(views.log_header())
    last = 0
    try:
        while True:
            for row in rows:
                print(json.dumps(row) if args.json else views.log_line(row), flush=True)
                last = max(last, row["id"])
            if not args.follow:
                return 0
            sleep(1)
            rows = _logs_after(client, path, args.status, last)
    except KeyboardInterrupt:
        return 130  # as documented: Ctrl-C ends with 130, also while following


def _logs_after(
    client: AdminClient, path: str, status: str | None, last: int
) -> list[dict[str, Any]]:
    """Rows with an id above ``last``, oldest first (pages are newest first)."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = client.request("GET", path, query={"limit": 100, "status": status, "cursor": cursor})
        items = page.get("items") or []
        fresh = [row for row in items if row["id"] > last]
        rows += fresh
        cursor = page.get("next_cursor")
        if len(fresh) < len(items) or not cursor:
            break
    return sorted(rows, key=lambda r: r["id"])
