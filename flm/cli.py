"""The ``flm`` command: a thin client of the admin HTTP API (standard library only).

``flm [--url URL] [--token T] GROUP COMMAND [ARGS] [--json]``. Each command is a
handler ``(client, args) -> exit code``; most are one request plus a formatter.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from time import sleep
from typing import Any

from flm import __version__
from flm import cli_format as fmt

DEFAULT_URL = "http://127.0.0.1:8420"
PAGE_SIZE = 500  # the admin API's maximum ``limit``


class CliError(Exception):
    """A failure to report as one ``flm: error: ...`` line (exit 1)."""


class UsageError(CliError):
    """A command line that parses but makes no sense (exit 2)."""


class AdminClient:
    """JSON over HTTP to the admin API; every failure becomes a :class:`CliError`."""

    def __init__(self, url: str, token: str | None, token_source: str, timeout: float,
                 insecure: bool = False) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._token_source = token_source
        self._timeout = timeout
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if parts.scheme == "http" and not _is_loopback(host) and not insecure:
            raise CliError(f"refusing to send the admin token over plain HTTP to {host}; use "
                           "an https:// URL, or --insecure if the network is trusted")
        # A loopback admin API is never reached through $http_proxy; a redirect is never
        # followed (it would carry the token to wherever it points).
        handlers: list[Any] = [_NoRedirect()]
        if _is_loopback(host):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        also_ok: tuple[int, ...] = (),
    ) -> Any:
        """Send one request and return the decoded JSON answer (``None`` if empty)."""
        with self._open(method, path, query, body, also_ok, "application/json") as resp:
            raw = resp.read()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(f"{self.url}{path} did not answer with JSON") from None

    def events(self, path: str) -> Iterator[dict[str, Any]]:
        """The ``data: {json}`` events of a Server-Sent Events stream, until it ends."""
        with self._open("GET", path, None, None, (), "text/event-stream", 3600) as resp:
            data: list[str] = []
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    try:
                        yield json.loads("\n".join(data))
                    except ValueError:
                        raise CliError(f"{self.url}{path} sent a malformed event") from None
                    data = []

    def _open(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        body: dict[str, Any] | None,
        also_ok: tuple[int, ...],
        accept: str,
        timeout: float | None = None,
    ) -> Any:
        query = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": accept, "User-Agent": "flm-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token and path.startswith("/api/"):
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            return self._opener.open(req, timeout=timeout or self._timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in also_ok:
                return exc
            raise CliError(self._http_message(exc)) from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach {self.url}: {_reason(exc.reason)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"cannot reach {self.url}: {_reason(exc)}") from None

    def _http_message(self, exc: urllib.error.HTTPError) -> str:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location") or "elsewhere"
            return (f"{self.url} answered with a redirect ({exc.code}) to {where[:200]}; not "
                    "following it with the admin token (use --url with the final address)")
        try:
            message = str(json.loads(exc.read())["error"]["message"])
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
            message = f"HTTP {exc.code} {exc.reason}"
        if exc.code == 401:
            if self._token:
                message += f" (the admin token from {self._token_source} was refused)"
            else:
                where = f"--token, $FLM_ADMIN_TOKEN or {self._token_source}"
                message += f" (no admin token: use {where})"
        return message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turns every redirect into an error: urllib would forward ``Authorization``."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError) or str(reason) == "timed out":
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    else:
        text = str(reason) or type(reason).__name__
    return text[:1].lower() + text[1:]


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


def _api_path(args: argparse.Namespace, suffix: str = "") -> str:
    return "/api/apis/" + urllib.parse.quote(args.api, safe="") + suffix


# -- commands ----------------------------------------------------------------------

Handler = Callable[[AdminClient, argparse.Namespace], int]
Show = Callable[[Any, argparse.Namespace], str]


def _emit(args: argparse.Namespace, data: Any, show: Show) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(show(data, args))


def _call(
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
        _emit(args, data, show)
        return 0

    return handler


def _status(client: AdminClient, args: argparse.Namespace) -> int:
    health = client.request("GET", "/health", also_ok=(503,)) or {}
    try:
        system = client.request("GET", "/api/system")
    except CliError:
        if not args.json:
            print(fmt.status_text(client.url, health, None))
        raise
    both = {"health": health, "system": system}
    _emit(args, both, lambda d, a: fmt.status_text(client.url, health, system))
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


def _apis_list(client: AdminClient, args: argparse.Namespace) -> int:
    _emit(args, _collect(client, {"status": args.status}, args.limit), lambda d, a: fmt.api_list(d))
    return 0


def _apis_delete(client: AdminClient, args: argparse.Namespace) -> int:
    client.request("DELETE", _api_path(args))  # 204, no body
    _emit(args, {"deleted": args.api}, lambda d, a: f"Deleted API {a.api}.")
    return 0


def _models_rm(client: AdminClient, args: argparse.Namespace) -> int:
    # The service refuses (409 model_in_use) while a running API uses the model.
    path = "/api/models/" + urllib.parse.quote(args.name, safe="")
    if args.force:
        path += "?force=true"
    _emit(args, client.request("DELETE", path), lambda d, a: f"Deleted model {args.name}.")
    return 0


def _models_pull(client: AdminClient, args: argparse.Namespace) -> int:
    started = client.request("POST", "/api/models/pull", body={"name": args.name}) or {}
    job = urllib.parse.quote(str(started.get("job")), safe="")
    view: fmt.TtyProgress | fmt.LineProgress = (
        fmt.TtyProgress(sys.stdout, terminal_width())
        if sys.stdout.isatty()
        else fmt.LineProgress(sys.stdout)
    )
    meter = fmt.RateMeter()
    state: dict[str, Any] = {"status": "running"}
    try:
        for state in _pull_states(client, job):
            if args.json:
                print(json.dumps(state), flush=True)
            else:
                view.update(meter.fill(dict(state)))
    except KeyboardInterrupt:
        view.close()
        print(f"flm: stopped watching; the pull goes on in the background (job {job})",
              file=sys.stderr)  # fmt: skip
        return 130
    finally:
        view.close()  # end the bar's line before any error message
    if state.get("status") != "done":
        raise CliError(f"pull of {args.name} failed: {state.get('error') or 'unknown error'}")
    if not args.json:
        print(f"Pulled {args.name}.")
    return 0


def _pull_states(client: AdminClient, job: str) -> Iterator[dict[str, Any]]:
    """The job's states from its event stream; should the stream end early, by polling."""
    path = f"/api/models/pulls/{job}"
    for state in client.events(path + "/events"):
        yield state
        if state.get("status") != "running":
            return
    while True:
        state = client.request("GET", path)
        yield state
        if state.get("status") != "running":
            return
        sleep(1)


def _logs(client: AdminClient, args: argparse.Namespace) -> int:
    path = _api_path(args, "/logs")
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
        print(fmt.log_header())
    last = 0
    try:
        while True:
            for row in rows:
                print(json.dumps(row) if args.json else fmt.log_line(row), flush=True)
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


# -- the command table -------------------------------------------------------------


def _state_change(action: str) -> Handler:
    return _call("POST", lambda a: _api_path(a, "/" + action),
                 lambda d, a: fmt.api_state(d, f"API {a.api}: {action} done."))  # fmt: skip


# (group, command or None, help, arguments, handler)
COMMANDS: list[tuple[str, str | None, str, list[Arg], Handler]] = [
    ("status", None, "service health and load", [], _status),
    ("apis", "list", "list APIs", [
        _arg("--status", choices=["running", "stopped", "error"]),
        _arg("--limit", type=_positive, metavar="N", help="at most N (default: all)")],
     _apis_list),
    ("apis", "create", "create an API and print its key", [
        _arg("name", help="a unique name"),
        _arg("--model", required=True, help="a model the backend serves"), *_limits(True),
        _arg("--no-start", dest="start", action="store_false", default=UNSET,
             help="create it stopped")],
     _call("POST", lambda a: "/api/apis", lambda d, a: fmt.api_created(d), body=_api_body)),
    ("apis", "show", "show one API", [API],
     _call("GET", _api_path, lambda d, a: fmt.api_details(d))),
    ("apis", "update", "change some of an API's fields", [
        API, _arg("--name", default=UNSET, help="a new name"),
        _arg("--model", default=UNSET, help="a new model"), *_limits(False)],
     _call("PATCH", _api_path, lambda d, a: fmt.api_details(d), body=_patch_body)),
    ("apis", "delete", "stop and delete an API, its logs and metrics", [API],
     _apis_delete),
    ("apis", "start", "open an API's port", [API], _state_change("start")),
    ("apis", "stop", "close an API's port", [API], _state_change("stop")),
    ("apis", "rotate-key", "replace an API's key", [API],
     _call("POST", lambda a: _api_path(a, "/rotate-key"), lambda d, a: fmt.api_key_rotated(d))),
    ("logs", None, "an API's request log, oldest first", [
        API, _arg("--limit", type=_positive, metavar="N", help="rows (default: the server's)"),
        _arg("--status", help="a status code (500) or class (5xx)"),
        _arg("--since", metavar="ISO", help="ISO 8601 time: rows from then"),
        _arg("--until", metavar="ISO", help="ISO 8601 time: rows before then"),
        _arg("-f", "--follow", action="store_true", help="print new rows as they come")],
     _logs),
    ("metrics", None, "an API's per-minute metrics", [
        API, _arg("--since", metavar="ISO", help="ISO 8601 time (default: 24 hours ago)"),
        _arg("--until", metavar="ISO", help="ISO 8601 time (default: now)")],
     _call("GET", lambda a: _api_path(a, "/metrics"), lambda d, a: fmt.metrics_table(d),
           query=lambda a: {"since": a.since, "until": a.until})),
    ("models", "list", "the backend's models", [],
     _call("GET", lambda a: "/api/models", lambda d, a: fmt.models_table(d))),
    ("models", "pull", "download a model, showing progress", [MODEL], _models_pull),
    ("models", "rm", "delete a model from the backend", [
        MODEL, _arg("--force", action="store_true", help="even if an API uses it")],
     _models_rm),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``flm`` argument parser, built from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="flm", description="Manage an FLM gateway.")
    parser.add_argument("--url", help=f"admin API (default: $FLM_URL or {DEFAULT_URL})")
    parser.add_argument("--token", help="admin token (default: $FLM_ADMIN_TOKEN, else the file)")
    parser.add_argument("--data-dir", help="where admin-token is (default: $FLM_DATA_DIR "
                        "or ~/.local/share/flm)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")
    parser.add_argument("--insecure", dest="insecure_url", action="store_true", help="allow a plain http:// admin "
                        "URL beyond loopback (the token crosses the network unencrypted)")
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


# -- the entry point -------------------------------------------------------------


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


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


if __name__ == "__main__":
    sys.exit(main())
