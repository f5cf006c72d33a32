"""What the admin API does to APIs: create, change, start, stop, rotate, delete."""

from __future__ import annotations

from typing import Any, Callable

from flm import keys
from flm.admin.errors import AdminError
from flm.admin import validation
from flm.admin.validation import STATUSES, invalid, validate_create, validate_update
from flm.registry import PortInUse, Registry, port_is_free
from flm.store import ApiRecord, Conflict, Store


def encode_cursor(last_id: int) -> str:
    return validation.encode_cursor(b"a", last_id)


def _conflict(e: Conflict) -> AdminError:
    return AdminError(409, f"{e.field}_taken", f"{e.field}: another API already has it")


class Apis:
    """The operations behind ``/api/apis``; routes live in ``flm.admin.app``."""

    def __init__(self, store: Store, registry: Registry, models: Any, *, api_host: str,
                 first_port: int, reserved_ports: set[int]) -> None:
        self.store = store
        self.registry = registry
        self.models = models
        self.api_host = api_host
        self.first_port = first_port
        self.reserved_ports = reserved_ports
        # Told the id of a deleted API (the metrics drop its series).
        self.forget: Callable[[int], None] = lambda api_id: None

    async def find(self, ref: str) -> ApiRecord:
        api = await self.store.get_api(ref)
        if api is None:
            raise AdminError(404, "not_found", f"No API with id or name {ref[:100]!r}.")
        return api

    async def _check_model(self, model: str, allow_unknown: bool) -> None:
        if allow_unknown or self.models is None:
            return
        known = await self.models.known(model)
        if known is False:
            raise invalid("model", f"the backend has no model {model!r} (pull it first, or "
                                   "set allow_unknown_model to true)")

    def _check_port(self, host: str, port: int) -> None:
        if port in self.reserved_ports or not port_is_free(host, port):
            raise AdminError(409, "port_taken", f"port: {port} is in use on {host}")

    async def _free_port(self, host: str) -> int:
        used = await self.store.used_ports() | self.reserved_ports
        for port in range(self.first_port, 65536):
            if port not in used and port_is_free(host, port):
                return port
        raise AdminError(409, "port_taken", "port: no free port left")

    async def create(self, payload: dict[str, Any]) -> dict[str, Any]:
        fields = validate_create(payload)
        start = fields.pop("start")
        await self._check_model(fields["model"], fields["allow_unknown_model"])
        fields.setdefault("host", self.api_host)
        if "port" in fields:
            self._check_port(fields["host"], fields["port"])
        else:
            fields["port"] = await self._free_port(fields["host"])
        key = keys.new_key()
        fields.update(key_hash=keys.hash_key(key), key_prefix=keys.key_prefix(key),
                      status="stopped")
        try:
            api = await self.store.create_api(fields)
        except Conflict as e:
            raise _conflict(e) from None
        if start:
            api = await self._start(api, raise_busy=False)
        return {**api.public(), "key": key}

    async def list(self, limit: int, cursor: str | None, status: str | None) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise invalid("status", f"must be one of {', '.join(STATUSES)}")
        after = validation.decode_cursor(b"a", cursor) if cursor else 0
        items, total = await self.store.list_apis(limit=limit + 1, after_id=after, status=status)
        more = len(items) > limit
        items = items[:limit]
        return {"items": [a.public() for a in items],
                "next_cursor": encode_cursor(items[-1].id) if more else None, "total": total}

    async def update(self, ref: str, payload: dict[str, Any]) -> dict[str, Any]:
        fields = validate_update(payload)
        api = await self.find(ref)
        status = fields.pop("status", None)
        if "model" in fields or fields.get("allow_unknown_model") is False:
            await self._check_model(fields.get("model", api.model),
                                    fields.get("allow_unknown_model", api.allow_unknown_model))
        moved = (fields.get("host", api.host), fields.get("port", api.port)) != (api.host, api.port)
        if moved:
            self._check_port(fields.get("host", api.host), fields.get("port", api.port))
        if fields:
            try:
                updated = await self.store.update_api(api.id, fields)
            except Conflict as e:
                raise _conflict(e) from None
            if updated is None:
                raise AdminError(404, "not_found", f"No API with id or name {ref[:100]!r}.")
            api = updated
            moving = self.registry.changed(api)
            if moving is not None:
                try:
                    await moving
                except PortInUse as e:
                    raise AdminError(409, "port_taken", f"port: {e}") from None
        if status == "running":
            api = await self._start(api)
        elif status == "stopped":
            api = await self.stop(str(api.id))
        return (await self.find(str(api.id))).public()

    async def _start(self, api: ApiRecord, raise_busy: bool = True) -> ApiRecord:
        try:
            return await self.registry.start(api)
        except PortInUse as e:
            if raise_busy:
                raise AdminError(409, "port_taken", f"port: {e}") from None
            return await self.find(str(api.id))

    async def start(self, ref: str) -> dict[str, Any]:
        return (await self._start(await self.find(ref))).public()

    async def stop(self, ref: str) -> ApiRecord:
        api = await self.find(ref)
        await self.registry.stop(api.id)
        return await self.find(str(api.id))

    async def rotate_key(self, ref: str) -> dict[str, Any]:
        api = await self.find(ref)
        key = keys.new_key()
        api = await self.store.update_api(api.id, {"key_hash": keys.hash_key(key),
                                                   "key_prefix": keys.key_prefix(key)})
        self.registry.changed(api)
        return {**api.public(), "key": key}

    async def delete(self, ref: str) -> None:
        api = await self.find(ref)
        await self.registry.stop(api.id, status=None)
        await self.store.delete_api(api.id)
        self.forget(api.id)
