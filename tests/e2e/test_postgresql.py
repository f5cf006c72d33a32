"""``twistd -n flm`` on PostgreSQL: it starts, serves, logs, and rides out an outage of
its database (connections terminated, new ones refused): requests are still answered
from the cached config, ``/health`` says degraded, and the rows kept meanwhile are
written once the database is back."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from flm.store.pg import connect
from tests import pg
from tests.e2e.conftest import Gateway, api_url, wait_for
from tests.e2e.test_sigterm_logs import all_logs

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def database() -> Iterator[str]:
    pg.require()
    url = pg.create_database()
    yield url
    pg.drop_database(url)


def _admin(sql: str, *args: object) -> None:
    with connect(pg.SERVER, autocommit=True) as conn:
        conn.execute(sql, args or None)


def test_serves_and_rides_out_an_outage(gateway_factory: Callable[..., Gateway],
                                        database: str) -> None:
    name = database.rsplit("/", 1)[1]
    gw = gateway_factory(settings={"database": database, "health_cache_s": 0.2,
                                   "log_flush_interval_s": 0.2})
    api = gw.create_api()
    headers = {"Authorization": f"Bearer {api['key']}"}
    health = gw.admin("GET", "/health").json()
    assert health["database"]["writable"] is True, health
    with httpx.Client(timeout=10) as client:
        def ask(n: int) -> None:
            for _ in range(n):
                r = client.post(f"{api_url(api)}/v1/chat/completions", json=BODY,
                                headers=headers)
                assert r.status_code == 200, r.text
        ask(5)
        wait_for(lambda: len(all_logs(gw, api["id"])) == 5, 15, "5 log rows")

        _admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = %s AND pid <> pg_backend_pid()", name)
            ask(7)  # served from the cached config, rows buffered
            degraded = wait_for(lambda: (r := gw.admin("GET", "/health")).status_code == 503
                                and r, 15, "/health to say degraded")
            assert degraded.json()["database"]["writable"] is False
        finally:
            _admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        wait_for(lambda: gw.admin("GET", "/health").status_code == 200, 20,
                 "/health ok again")
        wait_for(lambda: len(all_logs(gw, api["id"])) == 12, 20, "all 12 log rows")
    assert gw.stop() is not None
