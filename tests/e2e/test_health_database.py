"""``/health``'s ``database.writable`` is a real write, not the last log flush."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from tests.e2e.conftest import Gateway, wait_for


def test_a_locked_database_is_not_writable(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(settings={"request_log": False, "health_cache_s": 0.2})
    assert gw.admin("GET", "/health").json()["database"]["writable"] is True
    other = sqlite3.connect(gw.data_dir / "flm.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        health = wait_for(lambda: (r := gw.admin("GET", "/health")).status_code == 503 and r,
                          15, "/health to say degraded")
        assert health.json()["database"]["writable"] is False
        assert health.json()["status"] == "degraded"
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_for(lambda: gw.admin("GET", "/health").json()["database"]["writable"], 15,
             "the database to be writable again")
