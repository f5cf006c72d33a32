"""Queries over the ``apis`` table, mixed into :class:`flm.store.db.Store`.

Reads go to the read-only connection, writes to the writer inside ``BEGIN IMMEDIATE``;
both through the store's named, timed ``_read`` / ``_write``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred

from flm.records import API_FIELDS, ApiRecord
from flm.store.engine import integrity_error, unique_columns

_API_COLUMNS = ", ".join(API_FIELDS)
# Every config change bumps the version in its own transaction (bump, below).
_BUMP = "UPDATE config_version SET version = version + 1 WHERE id = 1"


def bump(c: Any) -> None:
    """Inside the write transaction of a config change: every node sees the counter move
    and reloads (:mod:`flm.nodes.sync`). Committed with the change, or not at all."""
    c.execute(_BUMP)


def fits_id(ref: int | str) -> bool:
    """Whether ``ref`` can be an id: a 64-bit integer (a larger one is no row, not an
    out-of-range error from the database)."""
    return int(ref) < 2**63


class Conflict(Exception):
    """A unique field (``name``, ``port``) is taken; ``field`` says which."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is taken")
        self.field = field


_BACKENDS = API_FIELDS.index("backends")


def _record(row: Sequence[Any]) -> ApiRecord:
    values = list(row)
    for flag in ("allow_unknown_model", "insecure"):
        values[API_FIELDS.index(flag)] = bool(values[API_FIELDS.index(flag)])
    if values[_BACKENDS] is not None:
        values[_BACKENDS] = tuple(json.loads(values[_BACKENDS]))
    return ApiRecord(*values)


def _stored(fields: dict[str, Any]) -> dict[str, Any]:
    """Values as columns hold them: ``backends`` as a JSON list."""
    if fields.get("backends") is not None:
        fields = {**fields, "backends": json.dumps(list(fields["backends"]))}
    return fields


def _conflict(e: Exception) -> Exception:
    text = unique_columns(e)
    for field in ("name", "port"):
        if f"apis.{field}" in text:
            return Conflict(field)
    return e


class Queries:
    """What a group of queries needs of the :class:`~flm.store.db.Store` it is mixed into."""

    def _read(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        raise NotImplementedError

    def _write(self, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        raise NotImplementedError

    def now_iso(self) -> str:
        raise NotImplementedError


class ApiQueries(Queries):
    """Create, find, list and change APIs (deleting them is the store's: rows follow)."""

    async def create_api(self, fields: dict[str, Any]) -> ApiRecord:
        now = self.now_iso()
        row = {"insecure": False, "tls_cert": None, "tls_key": None, "backends": None,
               "affinity": None, **_stored(fields), "created_at": now, "updated_at": now, "last_used_at": None,
               "status_reason": fields.get("status_reason")}
        cols = [c for c in API_FIELDS if c != "id"]

        def txn(c: Any) -> ApiRecord:
            try:
                api_id = c.execute(f"INSERT INTO apis ({', '.join(cols)}) VALUES "
                                   f"({', '.join('?' * len(cols))}) RETURNING id",
                                   [row[k] for k in cols]).fetchone()[0]
            except Exception as e:
                if not integrity_error(e):
                    raise
                raise _conflict(e) from None
            # Its first key, named 'default' (flm.store.keys).
            c.execute("INSERT INTO api_keys (api_id, name, key_hash, prefix, created_at) "
                      "VALUES (?, 'default', ?, ?, ?)",
                      (api_id, row["key_hash"], row["key_prefix"], now))
            bump(c)
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE id = ?", (api_id,))
            return _record(c.fetchone())
        return await self._write("create_api", txn)

    async def get_api(self, ref: int | str) -> ApiRecord | None:
        """By id (an int or a string of digits) or by name."""
        column = "id" if isinstance(ref, int) or ref.isdigit() else "name"
        if column == "id" and not fits_id(ref):
            return None

        def txn(c: Any) -> ApiRecord | None:
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE {column} = ?", (ref,))
            row = c.fetchone()
            return _record(row) if row else None
        return await self._read("get_api", txn)

    async def list_apis(self, *, limit: int, after_id: int = 0,
                        status: str | None = None) -> tuple[list[ApiRecord], int]:
        """One page ordered by id, and the total matching the filter."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])

        def txn(c: Any) -> tuple[list[ApiRecord], int]:
            page_where = f"{where} {'AND' if where else 'WHERE'} id > ?"
            c.execute(f"SELECT {_API_COLUMNS} FROM apis {page_where} ORDER BY id LIMIT ?",
                      [*args, after_id, limit])
            items = [_record(r) for r in c.fetchall()]
            c.execute(f"SELECT count(*) FROM apis {where}", args)
            return items, c.fetchone()[0]
        return await self._read("list_apis", txn)

    async def apis_to_run(self) -> list[ApiRecord]:
        """APIs that were running (or failed to) when the service last stopped."""
        def txn(c: Any) -> list[ApiRecord]:
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE status IN ('running', 'error') "
                      "ORDER BY id")
            return [_record(r) for r in c.fetchall()]
        return await self._read("apis_to_run", txn)

    async def used_ports(self) -> set[int]:
        def txn(c: Any) -> set[int]:
            c.execute("SELECT port FROM apis")
            return {r[0] for r in c.fetchall()}
        return await self._read("used_ports", txn)

    async def update_api(self, api_id: int, fields: dict[str, Any]) -> ApiRecord | None:
        """Change fields (also ``status``, ``key_hash``...); None if the API is gone."""
        fields = {**_stored(fields), "updated_at": self.now_iso()}
        assignments = ", ".join(f"{k} = ?" for k in fields)

        def txn(c: Any) -> ApiRecord | None:
            try:
                c.execute(f"UPDATE apis SET {assignments} WHERE id = ?",
                          [*fields.values(), api_id])
            except Exception as e:
                if not integrity_error(e):
                    raise
                raise _conflict(e) from None
            if c.rowcount > 0:
                bump(c)
            c.execute(f"SELECT {_API_COLUMNS} FROM apis WHERE id = ?", (api_id,))
            row = c.fetchone()
            return _record(row) if row else None
        return await self._write("update_api", txn)
