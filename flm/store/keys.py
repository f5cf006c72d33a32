"""Queries over API keys and their daily usage rollup, mixed into :class:`flm.store.db.Store`.

The key named ``default`` is mirrored in ``apis.key_hash`` / ``key_prefix`` (the API
object's ``key_prefix``); the gateway reads keys only from ``api_keys``.
"""

from __future__ import annotations

from typing import Any, Sequence

from flm.records import KEY_FIELDS, KeyRecord
from flm.store.apis import Conflict, Queries, bump, fits_id
from flm.store.engine import integrity_error, unique_columns

_KEY_COLUMNS = ", ".join(KEY_FIELDS)

_ADD_USAGE = (
    "INSERT INTO key_usage (key_id, day, requests, tokens) "
    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM api_keys WHERE id = ?) "
    "ON CONFLICT (key_id, day) DO UPDATE SET "
    "requests = key_usage.requests + excluded.requests, "
    "tokens = key_usage.tokens + excluded.tokens")


def key_record(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(*row)


def insert_key(c: Any, api_id: int, name: str, key_hash: str, prefix: str,
               created_at: str, **limits: Any) -> int:
    """Inside a write transaction; raises ``Conflict('name')`` for a name taken in the API."""
    cols = ["api_id", "name", "key_hash", "prefix", "created_at", *limits]
    try:
        return int(c.execute(f"INSERT INTO api_keys ({', '.join(cols)}) VALUES "
                             f"({', '.join('?' * len(cols))}) RETURNING id",
                             [api_id, name, key_hash, prefix, created_at, *limits.values()]
                             ).fetchone()[0])
    except Exception as e:
        if integrity_error(e) and unique_columns(e) == "api_keys.api_id, api_keys.name":
            raise Conflict("name") from None
        raise


def _one(c: Any, key_id: int) -> KeyRecord | None:
    c.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
    row = c.fetchone()
    return key_record(row) if row else None


class KeyQueries(Queries):
    """Create, find, list and change keys; add usage in batches; read it back at start."""

    async def create_key(self, api_id: int, name: str, key_hash: str, prefix: str,
                         **limits: Any) -> KeyRecord:
        now = self.now_iso()

        def txn(c: Any) -> KeyRecord | None:
            key_id = insert_key(c, api_id, name, key_hash, prefix, now, **limits)
            bump(c)
            return _one(c, key_id)
        record = await self._write("create_key", txn)
        assert record is not None
        return record

    async def keys_of(self, api_id: int) -> list[KeyRecord]:
        """Every key of the API, revoked ones too, oldest first."""
        def txn(c: Any) -> list[KeyRecord]:
            c.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE api_id = ? ORDER BY id",
                      (api_id,))
            return [key_record(r) for r in c.fetchall()]
        return await self._read("keys_of", txn)

    async def get_key(self, api_id: int, ref: str) -> KeyRecord | None:
        """By id (digits) or by name (names start with a letter)."""
        column = "id" if ref.isdigit() else "name"
        if column == "id" and not fits_id(ref):
            return None

        def txn(c: Any) -> KeyRecord | None:
            c.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE api_id = ? AND {column} = ?",
                      (api_id, ref))
            row = c.fetchone()
            return key_record(row) if row else None
        return await self._read("get_key", txn)

    async def update_key(self, key_id: int, fields: dict[str, Any]) -> KeyRecord | None:
        """Change fields; a new secret of the key named ``default`` also goes to its API."""
        assignments = ", ".join(f"{k} = ?" for k in fields)
        updated_at = self.now_iso()

        def txn(c: Any) -> KeyRecord | None:
            try:
                c.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?",
                          [*fields.values(), key_id])
            except Exception as e:
                if integrity_error(e) and unique_columns(e) == "api_keys.api_id, api_keys.name":
                    raise Conflict("name") from None
                raise
            if c.rowcount > 0:
                bump(c)
            record = _one(c, key_id)
            if record is not None and "key_hash" in fields and record.name == "default":
                c.execute("UPDATE apis SET key_hash = ?, key_prefix = ?, updated_at = ? "
                          "WHERE id = ?", (record.key_hash, record.prefix, updated_at,
                                           record.api_id))
            return record
        return await self._write("update_key", txn)

    async def add_key_usage(self, usage: dict[tuple[int, int], list[int]],
                            last_used: dict[int, str]) -> None:
        """Add ``{(key_id, day): [requests, tokens]}`` in one transaction; keys deleted
        meanwhile are skipped."""
        # In key order: concurrent writers (other nodes) take row locks in one order.
        rows = [(k, d, v[0], v[1], k) for (k, d), v in sorted(usage.items())]
        used = [(t, k) for k, t in sorted(last_used.items())]

        def txn(c: Any) -> None:
            c.executemany(_ADD_USAGE, rows)
            c.executemany("UPDATE api_keys SET last_used_at = ? WHERE id = ?", used)
        await self._write("add_key_usage", txn)

    async def key_usage_since(self, first_day: int) -> list[tuple[int, int, int, int]]:
        """``(key_id, day, requests, tokens)`` of every key from ``first_day`` on."""
        def txn(c: Any) -> list[tuple[int, int, int, int]]:
            c.execute("SELECT key_id, day, requests, tokens FROM key_usage WHERE day >= ?",
                      (first_day,))
            return [tuple(r) for r in c.fetchall()]
        return await self._read("key_usage_since", txn)

