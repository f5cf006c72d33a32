"""What the admin API does to APIs: create, change, start, stop, rotate, delete."""

from __future__ import annotations

from typing import Any, Callable

import attrs

from flm import keys
from flm.admin import validation
from flm.admin.errors import AdminError
from flm.admin.keys import Keys
from flm.admin.validation import STATUSES, invalid, validate_create, validate_update
from flm.gateway.ports import PortInUse, bind_problem
from flm.gateway.registry import ApiGone, Registry
from flm.http.tls import TlsProblem
from flm.store import ApiRecord, Conflict, Store

# Creates without a port that race for the same free one: each retries with the next.
PORT_ATTEMPTS = 20


def encode_cursor(last_id: int) -> str:
    return validation.encode_cursor(b"a", last_id)


def _conflict(e: Conflict) -> AdminError:
    return AdminError(409, f"{e.field}_taken", f"{e.field}: another API already has it")


def _cannot_listen(e: PortInUse) -> AdminError:
    if e.field == "port":
        return AdminError(409, "port_taken", f"port: {e}")
    return invalid(e.field, str(e).removeprefix(f"{e.field}: "))


# Stand-ins for the stored fields a check of a new API's listening port does not read.
_BLANK: dict[str, Any] = {"id": 0, "name": "", "port": 0, "model": "", "status": "stopped",
                          "status_reason": None, "key_hash": "", "key_prefix": "",
                          "created_at": "", "updated_at": "", "last_used_at": None}


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
        # Told each change, ``publish(action, {"api": obj})`` (the admin event stream).
        self.publish: Callable[[str, dict[str, Any]], None] = lambda action, obj: None
        self.keys = Keys(store, registry, self.find)
        # The backends there are (names); set by the service when it has a fleet.
        self.backend_names: Callable[[], set[str]] | None = None

    def _check_backends(self, names: tuple[str, ...] | None) -> None:
        if names is None or self.backend_names is None:
            return
        unknown = [n for n in names if n not in self.backend_names()]
        if unknown:
            raise invalid("backends", f"no backend named {unknown[0]!r}")

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
        if port in self.reserved_ports:
            raise AdminError(409, "port_taken", f"port: {port} is the admin API's")
        problem = bind_problem(host, port)
        if problem is not None:
            raise _cannot_listen(problem)

    def _check_tls(self, config: ApiRecord) -> None:
        """Beyond loopback: HTTPS with a readable certificate and key, or ``insecure``."""
        try:
            self.registry.tls_options(config)
        except TlsProblem as e:
            raise invalid(e.field, e.message) from None

    @staticmethod
    def _check_host(host: str) -> None:
        problem = bind_problem(host, 0)
        if problem is not None:  # not an address of this machine: no port ever will do
            raise _cannot_listen(problem)

    async def _free_port(self, host: str, skip: set[int]) -> int:
        self._check_host(host)
        used = await self.store.used_ports() | self.reserved_ports | skip
        for port in range(self.first_port, 65536):
            if port not in used and bind_problem(host, port) is None:
                return port
        raise AdminError(409, "port_taken", "port: no free port left")

    async def create(self, payload: dict[str, Any]) -> dict[str, Any]:
        fields = validate_create(payload)
        self._check_backends(fields["backends"])
        start = fields.pop("start")
        await self._check_model(fields["model"], fields["allow_unknown_model"])
        fields.setdefault("host", self.api_host)
        self._check_tls(ApiRecord(**{**_BLANK, **fields}))
        key = keys.new_key()
        fields.update(key_hash=keys.hash_key(key), key_prefix=keys.key_prefix(key),
                      status="stopped")
        if "port" in fields:
            self._check_port(fields["host"], fields["port"])
            api = await self._insert(fields)
        else:
            api = await self._insert_on_a_free_port(fields)
        if start:
            api = await self._start(api, raise_busy=False)
        self.publish("created", {"api": api.public()})
        return {**api.public(), "key": key}

    async def _insert(self, fields: dict[str, Any]) -> ApiRecord:
        try:
            return await self.store.create_api(fields)
        except Conflict as e:
            raise _conflict(e) from None

    async def _insert_on_a_free_port(self, fields: dict[str, Any]) -> ApiRecord:
        """Another create may take the port found free meanwhile: then try the next."""
        skip: set[int] = set()
        for _ in range(PORT_ATTEMPTS):
            port = await self._free_port(fields["host"], skip)
            try:
                return await self.store.create_api({**fields, "port": port})
            except Conflict as e:
                if e.field != "port":
                    raise _conflict(e) from None
                skip.add(port)
        raise AdminError(409, "port_taken", "port: other APIs took every free port found; "
                                            "try again")

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
        self._check_backends(fields.get("backends"))
        api = await self.find(ref)
        status = fields.pop("status", None)
        if "model" in fields or fields.get("allow_unknown_model") is False:
            await self._check_model(fields.get("model", api.model),
                                    fields.get("allow_unknown_model", api.allow_unknown_model))
        if fields:
            target = attrs.evolve(api, **fields)
            self._check_tls(target)
            moved = Registry.listen_key(target) != Registry.listen_key(api)
            if target.host != api.host:
                self._check_host(target.host)

            async def persist() -> ApiRecord:
                try:
                    updated = await self.store.update_api(api.id, fields)
                except Conflict as e:
                    raise _conflict(e) from None
                if updated is None:
                    raise AdminError(404, "not_found", f"No API with id or name {ref[:100]!r}.")
                return updated
            if moved and api.id in self.registry.runtimes:
                try:  # the new port opens first; a failure leaves the API as it was
                    api = await self.registry.move(target, persist)
                except PortInUse as e:
                    raise _cannot_listen(e) from None
            else:
                if (target.host, target.port) != (api.host, api.port):
                    self._check_port(target.host, target.port)
                api = await persist()
                self.registry.changed(api)
        if status == "running":
            api = await self._start(api)
        elif status == "stopped":
            api = await self.stop(str(api.id))
        api = await self.find(str(api.id))
        self.publish("updated", {"api": api.public()})
        return api.public()

    async def _start(self, api: ApiRecord, raise_busy: bool = True) -> ApiRecord:
        try:
            return await self.registry.start(api)
        except ApiGone:
            raise _gone(api) from None
        except PortInUse as e:
            if raise_busy:
                raise _cannot_listen(e) from None
            return await self.find(str(api.id))

    async def start(self, ref: str) -> dict[str, Any]:
        api = await self._start(await self.find(ref))
        self.publish("started", {"api": api.public()})
        return api.public()

    async def stop(self, ref: str) -> ApiRecord:
        api = await self.find(ref)
        await self.registry.stop(api.id)
        api = await self.find(str(api.id))
        self.publish("stopped", {"api": api.public()})
        return api

    async def rotate_key(self, ref: str, grace_s: float = 0.0) -> dict[str, Any]:
        """A new secret for the key named ``default`` (see :meth:`Keys.rotate`)."""
        api, key = await self.keys.rotate(ref, "default", grace_s)
        api = await self.find(str(api.id))
        self.registry.changed(api)  # its key_prefix
        return {**api.public(), "key": key["key"], "grace_until": key["grace_until"]}

    async def delete(self, ref: str) -> None:
        api = await self.find(ref)
        await self.registry.stop(api.id, status=None)
        gone = [k.id for k in await self.store.keys_of(api.id)]
        await self.store.delete_api(api.id)  # its keys and their usage go with it
        self.registry.keys.forget(gone)
        self.forget(api.id)
        self.publish("deleted", {"api": {"id": api.id, "name": api.name}})


def _gone(api: ApiRecord) -> AdminError:
    """The API was deleted while this request worked on it."""
    return AdminError(404, "not_found", f"No API with id or name {api.name[:100]!r}.")
