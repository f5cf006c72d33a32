"""An API port's request: the key is checked before the body is read."""

from __future__ import annotations

import hashlib
from typing import Any

from flm import keys
from flm.gateway.errors import INVALID_KEY, KEY_EXPIRED, error_body
from flm.http.request import BoundedRequest
from flm.records import KeyRecord

_BEARER = {b"www-authenticate": b"Bearer"}


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
    return INVALID_KEY[0], INVALID_KEY[1], _BEARER


def check_key(runtime: Any, request: Any
              ) -> tuple[KeyRecord | None, tuple[int, bytes, dict[bytes, bytes]] | None]:
    """``(key, None)`` for a key that works now, else ``(None, (status, body, headers))``:
    an expired key gets ``key_expired``; anything else (revoked, past its grace period,
    unknown, missing) the uniform 401 of :func:`wrong_key`."""
    token = keys.bearer_token(request.requestHeaders.getRawHeaders(b"authorization", [b""])[0])
    now = runtime.registry.clock.seconds()
    key = None
    if token is not None:
        key = runtime.keyring.find(hashlib.sha256(token).hexdigest(), now)
    if key is None:
        return None, wrong_key(runtime, getattr(request.client, "host", ""))
    if key.expires_at is not None and now >= key.expires_at:
        runtime.refused("key_expired")
        return None, (KEY_EXPIRED[0], KEY_EXPIRED[1], _BEARER)
    return key, None


class ProxyRequest(BoundedRequest):
    """On an API port: the key is checked against the cached config before the body."""

    config: Any = None
    key: KeyRecord | None = None
    key_admitted = False  # passed every refusal: counts against its key when it ends

    def check_headers(self) -> None:
        site = self.channel.site
        key, refusal = check_key(site.runtime, self)
        if refusal is not None:
            self.refuse(*refusal[:2], headers=refusal[2])
            return
        self.key = key
        # Not cached (a cold cache with more running APIs than it holds): the resource
        # loads the config once the body is in.
        self.config = site.config()
