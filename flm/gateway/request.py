"""An API port's request: the key is checked before the body is read."""

from __future__ import annotations

from typing import Any

from flm import keys
from flm.gateway.errors import INVALID_KEY, error_body
from flm.http.request import BoundedRequest


def wrong_key(runtime: Any, address: str) -> tuple[int, bytes, dict[bytes, bytes]]:
    """The answer to a wrong key: 401, or 429 once this address sent too many wrong keys
    to this API. Only wrong keys are throttled: a right key is never looked up here."""
    runtime.refused_keys += 1
    guard = runtime.registry.failed_keys
    who = (runtime.id, address)
    wait = guard.blocked(who)
    if wait:
        runtime.throttled_keys += 1
        status, body = error_body("rate_limited", "Too many requests with a wrong key from "
                                  f"this address; retry in {wait} s.")
        return status, body, {b"retry-after": b"%d" % wait, b"www-authenticate": b"Bearer"}
    guard.failed(who)
    return INVALID_KEY[0], INVALID_KEY[1], {b"www-authenticate": b"Bearer"}


class ProxyRequest(BoundedRequest):
    """On an API port: the key is checked against the cached config before the body."""

    config: Any = None

    def check_headers(self) -> None:
        site = self.channel.site
        config = site.config()
        if config is None:
            # Not cached (a cold cache with more running APIs than it holds): the
            # resource loads it and checks the key once the body is in.
            return
        token = keys.bearer_token(self.requestHeaders.getRawHeaders(b"authorization", [b""])[0])
        if keys.matches(token, config.key_hash):
            self.config = config
        else:
            status, body, headers = wrong_key(site.runtime, getattr(self.client, "host", ""))
            self.refuse(status, body, headers=headers)
