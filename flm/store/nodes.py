"""Queries for several nodes sharing one database, mixed into :class:`flm.store.db.Store`:
the config version, the nodes' rows, leases, and exact budget charges.

Portable SQL only (``ON CONFLICT``, no engine-only functions): the same text runs on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

from flm.records import BackendRecord, KeyRecord, utc_iso
from flm.store.apis import _API_COLUMNS, Queries, _record
from flm.store.backends import _COLUMNS as _BACKEND_COLUMNS
from flm.store.backends import _record as _backend_record
from flm.store.keys import _KEY_COLUMNS, key_record


def _version(c: Any) -> int:
    c.execute("SELECT version FROM config_version WHERE id = 1")
    row = c.fetchone()
    return int(row[0]) if row else 0


def _totals(c: Any, key_ids: list[int], day: int, month: tuple[int, int]
            ) -> dict[int, tuple[int, int, int]]:
    """``{key_id: (tokens_today, tokens_month, requests_today)}`` of the keys with rows."""
    marks = ", ".join("?" * len(key_ids))
    c.execute(f"SELECT key_id, sum(CASE WHEN day = ? THEN tokens ELSE 0 END), "
              f"sum(tokens), sum(CASE WHEN day = ? THEN requests ELSE 0 END) "
              f"FROM key_usage WHERE key_id IN ({marks}) AND day >= ? "
              f"AND day < ? GROUP BY key_id", (day, day, *key_ids, *month))
    return {int(k): (int(t or 0), int(m or 0), int(r or 0)) for k, t, m, r in c.fetchall()}


class NodeQueries(Queries):
    """The config version and snapshot, the ``nodes`` rows, leases, budget charges."""

    async def config_version(self) -> int:
        """One primary-key read: what the node-sync loop polls."""
        return int(await self._read("config_version", _version))

    async def config_snapshot(self) -> tuple[int, list[Any], list[KeyRecord],
                                             list[BackendRecord]]:
        """``(version, apis, keys, backends)`` read in one transaction (one snapshot)."""
        def txn(c: Any) -> tuple[int, list[Any], list[KeyRecord], list[BackendRecord]]:
            version = _version(c)
            c.execute(f"SELECT {_API_COLUMNS} FROM apis ORDER BY id")
            apis = [_record(r) for r in c.fetchall()]
            c.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id")
            keys = [key_record(r) for r in c.fetchall()]
            c.execute(f"SELECT {_BACKEND_COLUMNS} FROM backends ORDER BY created_at, name")
            backends = [_backend_record(r) for r in c.fetchall()]
            return version, apis, keys, backends
        return await self._read("config_snapshot", txn)

    # nodes

    async def see_node(self, name: str, started_at: float, now: float, heartbeat_s: float,
                       apis: list[int]) -> None:
        """Insert or renew this node's row (``up``)."""
        def txn(c: Any) -> None:
            c.execute("INSERT INTO nodes (name, started_at, last_seen, seen_s, heartbeat_s, "
                      "status, apis) VALUES (?, ?, ?, ?, ?, 'up', ?) ON CONFLICT (name) DO "
                      "UPDATE SET started_at = excluded.started_at, last_seen = "
                      "excluded.last_seen, seen_s = excluded.seen_s, heartbeat_s = "
                      "excluded.heartbeat_s, status = 'up', apis = excluded.apis",
                      (name, utc_iso(started_at), utc_iso(now), now, heartbeat_s,
                       json.dumps(apis)))
        await self._write("see_node", txn)

    async def node_gone(self, name: str, now: float) -> None:
        """A clean stop: the row stays (``gone``, nothing served) for the operator to see."""
        def txn(c: Any) -> None:
            c.execute("UPDATE nodes SET status = 'gone', apis = '[]', last_seen = ?, "
                      "seen_s = ? WHERE name = ?", (utc_iso(now), now, name))
        await self._write("node_gone", txn)

    async def list_nodes(self) -> list[tuple[str, str, str, float, float, str, list[int]]]:
        """``(name, started_at, last_seen, seen_s, heartbeat_s, status, apis)`` by name."""
        def txn(c: Any) -> list[Any]:
            c.execute("SELECT name, started_at, last_seen, seen_s, heartbeat_s, status, apis "
                      "FROM nodes ORDER BY name")
            return [(*r[:6], json.loads(r[6])) for r in c.fetchall()]
        return await self._read("list_nodes", txn)

    # leases

    async def take_lease(self, name: str, holder: str, now: float, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` until ``now + ttl_s``: True when ``holder``
        has it. One atomic UPDATE (ours, or expired), else a first INSERT."""
        def txn(c: Any) -> bool:
            c.execute("UPDATE leases SET holder = ?, expires_at = ? WHERE name = ? AND "
                      "(holder = ? OR expires_at < ?)", (holder, now + ttl_s, name, holder, now))
            if c.rowcount > 0:
                return True
            c.execute("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                      "ON CONFLICT (name) DO NOTHING", (name, holder, now + ttl_s))
            return c.rowcount > 0
        return bool(await self._write("take_lease", txn))

    async def drop_lease(self, name: str, holder: str) -> None:
        """Hand the lease on at a clean stop (another node need not wait for expiry)."""
        def txn(c: Any) -> None:
            c.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
        await self._write("drop_lease", txn)

    # budgets

    async def charge_key(self, key_id: int, day: int, tokens: int, month: tuple[int, int],
                         last_used: str) -> tuple[int, int] | None:
        """Add one request of ``tokens`` to the key's day, atomically; return the stored
        ``(tokens_today, tokens_month)`` (every node's), None if the key is gone."""
        def txn(c: Any) -> tuple[int, int] | None:
            # The key's row first (locked on PostgreSQL): a key deleted meanwhile is
            # skipped, never a foreign-key error that would block the queue.
            c.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (last_used, key_id))
            if c.rowcount <= 0:
                return None
            c.execute("INSERT INTO key_usage (key_id, day, requests, tokens) "
                      "VALUES (?, ?, 1, ?) ON CONFLICT (key_id, day) DO UPDATE SET "
                      "requests = key_usage.requests + 1, "
                      "tokens = key_usage.tokens + excluded.tokens", (key_id, day, tokens))
            today, total, _ = _totals(c, [key_id], day, month).get(key_id, (0, 0, 0))
            return today, total
        return await self._write("charge_key", txn)

    async def key_tokens(self, key_ids: list[int], day: int, month: tuple[int, int]
                         ) -> dict[int, tuple[int, int, int]]:
        """``{key_id: (tokens_today, tokens_month, requests_today)}`` as stored: every
        node's usage."""
        if not key_ids:
            return {}
        return await self._read("key_tokens", _totals, key_ids, day, month)
