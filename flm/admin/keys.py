"""``/api/apis/{id}/keys``: list, create, show, change, revoke and rotate an API's keys.

Every change is stored, then pushed to the running API at once (``Registry.set_keys``):
the request path never reads the store. A secret is shown once, when made.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from flm import keys
from flm.admin.errors import AdminError
from flm.admin.observe import parse_time
from flm.admin.validation import NAME, _int, _pattern, invalid, unknown_field
from flm.gateway.keys import month_span
from flm.observe.budgets import DAY, settle_from_store
from flm.records import ApiRecord, KeyRecord, utc_iso
from flm.store import Conflict

log = Logger()

MAX_GRACE_S = 604_800  # a week


def _expires_at(field: str, value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(field, "must be an ISO 8601 time such as 2030-01-01T00:00:00Z, or null")
    return parse_time(field, value)


LIMITS: dict[str, Callable[[str, Any], Any]] = {
    "rate_limit_rpm": _int(1, 1_000_000, nullable=True),
    "tpm_limit": _int(1, 10**12, nullable=True),
    "daily_token_budget": _int(1, 10**15, nullable=True),
    "monthly_token_budget": _int(1, 10**15, nullable=True),
}
FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "name": _pattern(NAME, "must start with a letter and hold 1-64 letters, digits, '.', '_' "
                           "or '-'"),
    "expires_at": _expires_at,
    **LIMITS,
}


def validate_key(payload: dict[str, Any], create: bool) -> dict[str, Any]:
    out = {}
    for field, value in payload.items():
        check = FIELDS.get(field)
        if check is None:
            raise unknown_field(field)
        out[field] = check(field, value)
    if create and "name" not in out:
        raise invalid("name", "is required")
    return out


def grace_of(payload: dict[str, Any]) -> float:
    for field in payload:
        if field != "grace_s":
            raise unknown_field(field)
    grace = payload.get("grace_s", 0)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) \
            or not 0 <= grace <= MAX_GRACE_S:
        raise invalid("grace_s", f"must be a number of seconds from 0 to {MAX_GRACE_S}")
    return float(grace)


def _taken() -> AdminError:
    return AdminError(409, "name_taken", "name: another key of this API already has it")


class Keys:
    """The operations; ``apis`` finds APIs (404s), the registry gets every change."""

    def __init__(self, store: Any, registry: Any, find_api: Callable[[str], Any]) -> None:
        self.store = store
        self.registry = registry
        self.find_api = find_api
        # Told each change, ``publish(action, {"api_id", "key"})`` (the admin event stream).
        self.publish: Callable[[str, dict[str, Any]], None] = lambda action, obj: None

    def _now(self) -> float:
        return float(self.registry.clock.seconds())

    def public(self, key: KeyRecord) -> dict[str, Any]:
        return key.public(self._now(), self.registry.keys.usage(key.id))

    async def find(self, api: ApiRecord, ref: str) -> KeyRecord:
        key = await self.store.get_key(api.id, ref)
        if key is None:
            raise AdminError(404, "not_found", f"API {api.name!r} has no key with id or name "
                                               f"{ref[:100]!r}.")
        return key

    async def _push(self, api_id: int, action: str = "changed", key: Any = None) -> None:
        self.registry.set_keys(api_id, await self.store.keys_of(api_id))
        self.publish(action, {"api_id": api_id,
                              "key": None if key is None else self.public(key)})

    async def _cluster_usage(self, keys: list[KeyRecord]) -> None:
        """With several nodes, the usage to show is every node's: the stored totals plus
        this node's not stored yet (alone, this node's own counts are exact)."""
        if getattr(self.registry, "shared", False):
            day = int(self._now() // DAY)
            await settle_from_store(self.store, self.registry.keys, [k.id for k in keys],
                                    day, month_span(day))

    async def list(self, api_ref: str) -> dict[str, Any]:
        api = await self.find_api(api_ref)
        keys_ = await self.store.keys_of(api.id)
        await self._cluster_usage(keys_)
        return {"items": [self.public(k) for k in keys_]}

    async def show(self, api_ref: str, ref: str) -> dict[str, Any]:
        api = await self.find_api(api_ref)
        key = await self.find(api, ref)
        await self._cluster_usage([key])
        return self.public(key)

    async def create(self, api_ref: str, payload: dict[str, Any]) -> dict[str, Any]:
        fields = validate_key(payload, create=True)
        api = await self.find_api(api_ref)
        secret = keys.new_key()
        name = fields.pop("name")
        try:
            key = await self.store.create_key(api.id, name, keys.hash_key(secret),
                                              keys.key_prefix(secret), **fields)
        except Conflict:
            raise _taken() from None
        await self._push(api.id, "created", key)
        return {**self.public(key), "key": secret}

    async def update(self, api_ref: str, ref: str, payload: dict[str, Any]) -> dict[str, Any]:
        fields = validate_key(payload, create=False)
        api = await self.find_api(api_ref)
        key = await self.find(api, ref)
        if fields:
            try:
                key = await self._update(api_ref, key, fields)
            except Conflict:
                raise _taken() from None
            await self._push(api.id, "updated", key)
        return self.public(key)

    async def revoke(self, api_ref: str, ref: str) -> dict[str, Any]:
        api = await self.find_api(api_ref)
        key = await self.find(api, ref)
        if key.revoked_at is None:
            key = await self._update(api_ref, key, {
                "revoked_at": utc_iso(self._now()), "old_hash": None, "grace_until": None})
            await self._push(api.id, "revoked", key)
        return self.public(key)

    async def _update(self, api_ref: str, key: KeyRecord, fields: dict[str, Any]) -> KeyRecord:
        """Write ``fields``; a 404 when the key went meanwhile (with its API, or revoked
        and deleted by another request)."""
        updated = await self.store.update_key(key.id, fields)
        if updated is None:
            raise AdminError(404, "not_found", f"No API with id or name {api_ref[:100]!r}, "
                                               f"or it has no key {key.name!r} any more.")
        return updated

    async def rotate(self, api_ref: str, ref: str, grace_s: float
                     ) -> tuple[ApiRecord, dict[str, Any]]:
        """A new secret for the key; the old one works ``grace_s`` seconds more (a
        previous rotation's old secret stops now)."""
        api = await self.find_api(api_ref)
        key = await self.find(api, ref)
        if key.revoked_at is not None:
            raise AdminError(409, "key_revoked", f"key {key.name!r} is revoked; create a "
                                                 "new key instead")
        secret = keys.new_key()
        grace = {"old_hash": key.key_hash, "grace_until": self._now() + grace_s} \
            if grace_s > 0 else {"old_hash": None, "grace_until": None}
        key = await self._update(api_ref, key, {
            "key_hash": keys.hash_key(secret), "prefix": keys.key_prefix(secret), **grace})
        await self._push(api.id, "rotated", key)
        return api, {**self.public(key), "key": secret}
