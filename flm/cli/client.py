"""The admin API over HTTP (standard library only): JSON requests, Server-Sent Events,
and the rules that keep the admin token safe (no redirects, no plain HTTP off loopback,
no proxy for loopback)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any


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
