"""The ``flm`` command: a thin client of the admin HTTP API (standard library only).

``flm [--url URL] [--token T] GROUP COMMAND [ARGS] [--json]``. Each command is a
handler ``(client, args) -> exit code``; most are one request plus a formatter.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flm.cli.client import AdminClient, CliError, UsageError
from flm.cli.parser import DEFAULT_URL, build_parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``flm`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        client = AdminClient(*_resolve_url_and_token(args), timeout=args.timeout,
                             insecure=args.insecure_url)
        return int(args.handler(client, args))
    except UsageError as exc:
        print(f"flm: error: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"flm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``flm apis list | head``): nothing more to say.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the exit-time flush quiet
        return 1


def _resolve_url_and_token(args: argparse.Namespace) -> tuple[str, str | None, str]:
    url = args.url or os.environ.get("FLM_URL") or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    if args.token:
        return url, args.token, "--token"
    if os.environ.get("FLM_ADMIN_TOKEN"):
        return url, os.environ["FLM_ADMIN_TOKEN"], "$FLM_ADMIN_TOKEN"
    data_dir = args.data_dir or os.environ.get("FLM_DATA_DIR") or "~/.local/share/flm"
    token_file = Path(data_dir).expanduser() / "admin-token"
    try:
        token = token_file.read_text().strip() or None
    except OSError:
        token = None
    return url, token, str(token_file)

