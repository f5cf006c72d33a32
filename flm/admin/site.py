"""The admin endpoint's HTTP plumbing: the Host and path checks before the body, the
site, and the Klein app whose every route needs the admin token unless it says otherwise."""

from __future__ import annotations

import functools
import ipaddress
import json
from typing import Any, Awaitable
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred

from flm.http.edge import GuardedSite
from flm.http.request import BoundedRequest


class AdminRequest(BoundedRequest):
    def check_headers(self) -> None:
        # A web page cannot reach a loopback admin API through DNS rebinding when only
        # known host names are answered.
        allowed = self.channel.site.allowed_hosts
        host = (self.requestHeaders.getRawHeaders(b"host", [b""])[0]
                .decode("latin-1").strip().lower())
        if "*" not in allowed and _without_port(host) not in allowed:
            self.refuse(421, self.channel.site.error_body(
                421, "host_not_allowed", f"This admin API does not answer to Host {host[:100]!r}."))
            return
        try:  # Klein would answer a text/html 400 and log a traceback
            unquote_to_bytes(self.request_line[1].split(b"?", 1)[0]).decode("utf-8")
            host.encode("latin-1").decode("utf-8")
        except UnicodeError:
            self.refuse(400, self.channel.site.error_body(
                400, "bad_request", "The path or Host is not UTF-8 once percent-decoded."))


def _without_port(host: str) -> str:
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.split(":")[0] if host.count(":") == 1 else host


def loopback_peer(request: Any) -> bool:
    host = getattr(request.getClientAddress(), "host", None)
    if host is None:  # a UNIX socket: only this machine reaches it
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminSite(GuardedSite):
    requestFactory = AdminRequest
    allowed_hosts: frozenset[str] = frozenset({"*"})

    def error_body(self, status: int, code: str, message: str) -> bytes:
        return json.dumps({"error": {"code": code, "message": message}}).encode()


class Changes:
    """Admin changes under way on this node: the node-sync loop (:mod:`flm.nodes.sync`)
    does not apply a config read while one ran, as the read may predate it."""

    def __init__(self) -> None:
        self.active = 0
        self.started = 0  # ever begun: a read taken before it may be stale

    def begin(self) -> None:
        self.active += 1
        self.started += 1

    def end(self, result: Any) -> Any:
        self.active -= 1
        return result


def shield(coro: Awaitable[Any], changes: Changes | None = None) -> Deferred[Any]:
    """Run a mutation to its end even if the client hangs up (Klein cancels routes then)."""
    if changes is not None:
        changes.begin()
    inner = Deferred.fromCoroutine(coro)  # type: ignore[arg-type]
    if changes is not None:
        inner.addBoth(changes.end)
    outer: Deferred[Any] = Deferred()
    inner.chainDeferred(outer)
    return outer


class AdminKlein(Klein):
    """Every route checks the admin token first, unless it is declared ``public=True``:
    a new route cannot forget it."""

    def route(self, url: str, *args: Any, public: bool = False, **kwargs: Any) -> Any:
        register = super().route(url, *args, **kwargs)
        if public:
            return register

        def deco(f: Any) -> Any:
            @functools.wraps(f)
            def authorized(instance: Any, request: Any, *a: Any, **kw: Any) -> Any:
                instance.check_token(request)
                return f(instance, request, *a, **kw)
            register(authorized)
            return f
        return deco
