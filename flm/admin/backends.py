"""``/api/backends``: model servers as a managed resource (stored, probed, routed to).

The store keeps what the admin API sets; the fleet (``flm.gateway.fleet``) holds each
backend's live side: gate, health, models. ``make_member`` (from the service) builds the
live side of a stored backend.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from flm.admin.errors import AdminError, json_body
from flm.admin.validation import NAME, invalid, parse_json
from flm.backends.base import backend_base_url
from flm.gateway.fleet import Fleet, Member
from flm.records import BackendRecord, utc_iso
from flm.store import Conflict, Store

KINDS = ("ollama", "openai")


def _url(field: str, value: Any) -> str:
    what = "must be an http:// or https:// URL with a host, such as http://127.0.0.1:11434"
    if not isinstance(value, str) or len(value) > 2048:
        raise invalid(field, what)
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise invalid(field, what) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise invalid(field, what)
    return value


def _int(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise invalid(field, f"must be an integer from {lo} to {hi}")
        return value
    return check


def _kind(field: str, value: Any) -> str:
    if value not in KINDS:
        raise invalid(field, f"must be one of {', '.join(KINDS)}")
    return value


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(field, "must be true or false")
    return value


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise invalid(field, "must start with a letter and hold 1-64 letters, digits, '.', "
                             "'_' or '-'")
    return value


FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "url": _url, "kind": _kind, "max_concurrent": _int(1, 4096), "weight": _int(1, 1000),
    "enabled": _bool}
READ_ONLY = ("state", "in_flight", "waiting", "models", "last_error", "checked_at",
             "created_at", "updated_at", "requests", "failures", "retries")


def _check(payload: dict[str, Any], allowed: dict[str, Callable[[str, Any], Any]]
           ) -> dict[str, Any]:
    out = {}
    for field, value in payload.items():
        if field in READ_ONLY:
            raise invalid(field, "is read-only")
        check = allowed.get(field)
        if check is None:
            raise AdminError(422, "unknown_field", f"{str(field)[:64]}: unknown field")
        out[field] = check(field, value)
    return out


def public(record: BackendRecord, member: Member | None) -> dict[str, Any]:
    """The backend object: what is stored, and what it is doing now."""
    out: dict[str, Any] = {
        "name": record.name, "url": record.url, "kind": record.kind,
        "max_concurrent": record.max_concurrent, "weight": record.weight,
        "enabled": record.enabled, "created_at": record.created_at,
        "updated_at": record.updated_at}
    health = member.health if member is not None else None
    models = None
    listing = getattr(getattr(member, "models", None), "_last", None)
    if listing is not None:
        models = [m.get("name") for m in listing.models]
    out.update({
        "state": health.state if health is not None else "down",
        "in_flight": member.gate.in_use if member is not None else 0,
        "waiting": member.gate.waiting if member is not None else 0,
        "models": models,
        "last_error": health.last_error if health is not None else None,
        "checked_at": (utc_iso(health.checked_at)
                       if health is not None and health.checked_at is not None else None),
        "requests": member.requests if member is not None else 0,
        "failures": member.failures if member is not None else 0,
        "retries": member.retries if member is not None else 0})
    return out


class Backends:
    """The operations behind ``/api/backends``; routes live in ``flm.admin.app``."""

    def __init__(self, store: Store, fleet: Fleet,
                 make_member: Callable[[BackendRecord], Member]) -> None:
        self.store = store
        self.fleet = fleet
        self.make_member = make_member

    async def load(self, default: dict[str, Any]) -> None:
        """At start: the backend ``default`` as the command line says, then every other
        stored one into the fleet (``default`` is there already, built from the options)."""
        await self.store.put_default_backend(default)
        self.sync(await self.store.list_backends(), remove=False)

    def sync(self, records: list[BackendRecord], remove: bool = True) -> None:
        """Make the fleet what the store holds (at start, and when another node changed
        it): new ones added, a new URL or kind a new member, the rest adjusted in place;
        with ``remove``, members no longer stored go (never ``default``)."""
        for record in records:
            member = self.fleet.members.get(record.name)
            # 'default' is each node's --backend (its live side built from the options).
            if member is None or record.name != "default" and (
                    member.base_url, member.kind) != (
                    backend_base_url(record.kind, record.url).encode(), record.kind):
                member = self.make_member(record)
                self.fleet.add(member)
                self.fleet.on_change(member)
            elif (member.weight, member.max_concurrent, member.enabled) != (
                    record.weight, record.max_concurrent, record.enabled):
                self._apply(member, record)
        if remove:
            for name in set(self.fleet.members) - {r.name for r in records} - {"default"}:
                self.fleet.remove(name)

    def _apply(self, member: Member, record: BackendRecord) -> None:
        member.weight = record.weight
        member.max_concurrent = record.max_concurrent
        was_enabled, member.enabled = member.enabled, record.enabled
        member.apply_limit()
        if member.prober is not None and self.fleet.running:
            if record.enabled and not was_enabled:
                member.prober.start()
            elif was_enabled and not record.enabled:
                member.prober.stop()
        self.fleet.on_change(member)

    def route(self, request: Any, name: str | None, shield: Callable[[Any], Any]) -> Any:
        """One ``/api/backends`` route; changes run under ``shield`` (a client hanging up
        does not cut them short)."""
        method = request.method.decode()
        body = parse_json(request.content.read()) if method in ("POST", "PATCH") else None
        if name is None:
            work, status = (self.list(), 200) if method == "GET" else (self.create(body or {}),
                                                                       201)
        elif method == "GET":
            work, status = self.show(name), 200
        elif method == "PATCH":
            work, status = self.update(name, body or {}), 200
        else:
            work, status = self.delete(name), 204

        async def run() -> bytes:
            payload = await work
            if status == 204:
                request.setResponseCode(204)
                return b""
            return json_body(request, status, payload)
        return shield(run()) if method != "GET" else Deferred.fromCoroutine(run())

    async def find(self, name: str) -> BackendRecord:
        record = await self.store.get_backend(name)
        if record is None:
            raise AdminError(404, "not_found", f"No backend named {name[:100]!r}.")
        return record

    async def list(self) -> dict[str, Any]:
        records = await self.store.list_backends()
        return {"items": [public(r, self.fleet.members.get(r.name)) for r in records]}

    async def show(self, name: str) -> dict[str, Any]:
        record = await self.find(name)
        return public(record, self.fleet.members.get(record.name))

    async def create(self, payload: dict[str, Any]) -> dict[str, Any]:
        if "name" not in payload:
            raise invalid("name", "is required")
        name = _name("name", payload.pop("name"))
        fields = _check(payload, FIELDS)
        if "url" not in fields:
            raise invalid("url", "is required")
        fields.setdefault("kind", "ollama")
        fields.setdefault("max_concurrent", 1 if fields["kind"] == "ollama" else 4)
        fields["url"] = backend_base_url(fields["kind"], fields["url"])
        try:
            record = await self.store.create_backend({"name": name, **fields})
        except Conflict:
            raise AdminError(409, "name_taken", "name: another backend already has it") \
                from None
        member = self.make_member(record)
        self.fleet.add(member)
        self.fleet.on_change(member)
        return public(record, member)

    async def update(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        if "name" in payload:
            raise invalid("name", "cannot be changed")
        fields = _check(payload, FIELDS)
        old = await self.find(name)
        kind = fields.get("kind", old.kind)
        if "url" in fields or "kind" in fields:
            fields["url"] = backend_base_url(kind, fields.get("url", old.url))
            if name == "default" and (fields["url"], kind) != (old.url, old.kind):
                # Checked before anything is written: --backend* set it at every start.
                raise invalid("url" if fields["url"] != old.url else "kind",
                              "the backend 'default' is set by --backend and --backend-kind")
        record = await self.store.update_backend(name, fields) if fields else old
        if record is None:
            raise AdminError(404, "not_found", f"No backend named {name[:100]!r}.")
        member = self.fleet.members.get(name)
        if member is None or (record.url, record.kind) != (old.url, old.kind):
            member = self.make_member(record)
            self.fleet.add(member)
            self.fleet.on_change(member)
        else:
            self._apply(member, record)
        return public(record, member)

    async def delete(self, name: str) -> None:
        await self.find(name)
        if name == "default":
            raise AdminError(409, "backend_in_use", "the backend 'default' is set by "
                             "--backend; disable it instead (enabled: false)")
        others = [m for m in self.fleet.members.values() if m.name != name and m.enabled]
        for api_id, api_name, names in await self.store.apis_naming():
            alone = (not any(n in self.fleet.members and n != name
                             and self.fleet.members[n].enabled for n in names)
                     if names else not others)
            if alone and (names is None or name in names):
                raise AdminError(409, "backend_in_use", f"API {api_name!r} depends on "
                                 f"backend {name!r} alone; change its backends first")
        await self.store.delete_backend(name)
        self.fleet.remove(name)

