"""Queries over the ``backends`` table, mixed into :class:`flm.store.db.Store`."""

from __future__ import annotations

import json
from typing import Any, Sequence

from flm.records import BACKEND_FIELDS, BackendRecord
from flm.store.apis import Conflict, Queries, bump
from flm.store.engine import integrity_error

_COLUMNS = ", ".join(BACKEND_FIELDS)


def _record(row: Sequence[Any]) -> BackendRecord:
    values = list(row)
    values[BACKEND_FIELDS.index("enabled")] = bool(values[BACKEND_FIELDS.index("enabled")])
    return BackendRecord(*values)


class BackendQueries(Queries):
    """Create, list, change and remove backends."""

    async def list_backends(self) -> list[BackendRecord]:
        def txn(c: Any) -> list[BackendRecord]:
            c.execute(f"SELECT {_COLUMNS} FROM backends ORDER BY created_at, name")
            return [_record(r) for r in c.fetchall()]
        return await self._read("list_backends", txn)

    async def get_backend(self, name: str) -> BackendRecord | None:
        def txn(c: Any) -> BackendRecord | None:
            c.execute(f"SELECT {_COLUMNS} FROM backends WHERE name = ?", (name,))
            row = c.fetchone()
            return _record(row) if row else None
        return await self._read("get_backend", txn)

    async def create_backend(self, fields: dict[str, Any]) -> BackendRecord:
        now = self.now_iso()
        row = {"weight": 1, "enabled": True, **fields, "created_at": now, "updated_at": now}

        def txn(c: Any) -> BackendRecord:
            try:
                c.execute(f"INSERT INTO backends ({_COLUMNS}) VALUES "
                          f"({', '.join('?' * len(BACKEND_FIELDS))})",
                          [row[k] for k in BACKEND_FIELDS])
            except Exception as e:
                if not integrity_error(e):
                    raise
                raise Conflict("name") from None
            bump(c)
            c.execute(f"SELECT {_COLUMNS} FROM backends WHERE name = ?", (row["name"],))
            return _record(c.fetchone())
        return await self._write("create_backend", txn)

    async def put_default_backend(self, fields: dict[str, Any]) -> BackendRecord:
        """The backend ``default`` as the command line describes it, at every start."""
        def txn(c: Any) -> BackendRecord:
            now = self.now_iso()
            c.execute("INSERT INTO backends (name, url, kind, max_concurrent, created_at, "
                      "updated_at) VALUES ('default', ?, ?, ?, ?, ?) ON CONFLICT (name) DO "
                      "UPDATE SET url = excluded.url, kind = excluded.kind, "
                      "max_concurrent = excluded.max_concurrent, updated_at = excluded.updated_at "
                      "WHERE backends.url != excluded.url OR backends.kind != excluded.kind OR "
                      "backends.max_concurrent != excluded.max_concurrent",
                      (fields["url"], fields["kind"], fields["max_concurrent"], now, now))
            if c.rowcount > 0:
                bump(c)
            c.execute(f"SELECT {_COLUMNS} FROM backends WHERE name = 'default'")
            return _record(c.fetchone())
        return await self._write("put_default_backend", txn)

    async def update_backend(self, name: str, fields: dict[str, Any]) -> BackendRecord | None:
        fields = {**fields, "updated_at": self.now_iso()}
        assignments = ", ".join(f"{k} = ?" for k in fields)

        def txn(c: Any) -> BackendRecord | None:
            c.execute(f"UPDATE backends SET {assignments} WHERE name = ?",
                      [*fields.values(), name])
            if c.rowcount > 0:
                bump(c)
            c.execute(f"SELECT {_COLUMNS} FROM backends WHERE name = ?", (name,))
            row = c.fetchone()
            return _record(row) if row else None
        return await self._write("update_backend", txn)

    async def delete_backend(self, name: str) -> bool:
        def txn(c: Any) -> bool:
            c.execute("DELETE FROM backends WHERE name = ?", (name,))
            gone = c.rowcount > 0
            if gone:
                bump(c)
            return gone
        return await self._write("delete_backend", txn)

    async def apis_naming(self) -> list[tuple[int, str, list[str] | None]]:
        """Every API's id, name and ``backends`` list (None: any backend)."""
        def txn(c: Any) -> list[tuple[int, str, list[str] | None]]:
            c.execute("SELECT id, name, backends FROM apis ORDER BY id")
            return [(i, n, None if b is None else json.loads(b)) for i, n, b in c.fetchall()]
        return await self._read("apis_naming", txn)
