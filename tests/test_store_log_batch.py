"""A batch of log rows goes to SQLite as one JSON text: every value must come back exactly
as recorded, with ids in the order recorded, the id spans noted, ``last_used_at`` set."""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from flm.store import Store, utc_iso
from flm.store.db import LOG_COLUMNS
from flm.store import logs
from tests.pg import OnPostgres
from tests.test_store import T0, api_fields, log_row

_TYPE = {int: "integer", float: "real", str: "text", type(None): "null"}


class LogBatchTests(TestCase):
    engine = "sqlite"

    def database(self) -> Any:
        return self.data / "flm.sqlite3"

    def setUp(self) -> None:
        self.data = data = Path(tempfile.mkdtemp(prefix="flm-test-logbatch-"))
        self.addCleanup(shutil.rmtree, data, True)
        self.store = Store(self.database(), now=lambda: T0)
        self.store.startService()
        self.addCleanup(self.store.stopService)

    async def stored(self) -> list[tuple[Any, ...]]:
        """(id, the type of each value as SQLite says it, the values)."""
        def txn(c: Any) -> list[tuple[Any, ...]]:
            if self.engine == "sqlite":
                c.execute(f"SELECT id, {', '.join(f'typeof({c_})' for c_ in LOG_COLUMNS)}, "
                          f"{', '.join(LOG_COLUMNS)} FROM request_logs ORDER BY id")
                return c.fetchall()
            c.execute(f"SELECT id, {', '.join(LOG_COLUMNS)} FROM request_logs ORDER BY id")
            return [(r[0], *(_TYPE[type(v)] for v in r[1:]), *r[1:]) for r in c.fetchall()]
        return await self.store.run_read("test_rows", txn)

    async def test_values_and_types_round_trip_exactly(self) -> None:
        api = await self.store.create_api(api_fields(1))
        rng = random.Random(7)
        rows = [log_row(api.id, T0 + rng.uniform(0, 86400), status=rng.choice([200, 503]),
                        queue_ms=rng.expovariate(1 / 3), ttfb_ms=None if i % 3 else 0.1 + i,
                        response_ms=rng.uniform(0, 1e6), bytes_in=2 ** 40 + i,
                        path='/v1/"q"\\é\u2028\u00a0😀', model="m\nx", prompt_tokens=None,
                        request_id=f"r-{i}", error="upstream: \"reset\"" if i % 2 else None)
                for i in range(777)]
        await self.store.insert_logs(rows, {api.id: T0 + 5})
        got = await self.stored()
        n = len(LOG_COLUMNS)
        self.assertEqual([r[1 + n:] for r in got], rows)
        want_types = [tuple("null" if v is None else {int: "integer", float: "real",
                                                      str: "text"}[type(v)] for v in row)
                      for row in rows]
        self.assertEqual([r[1:1 + n] for r in got], want_types)
        ids = [r[0] for r in got]
        self.assertEqual(ids, list(range(ids[0], ids[0] + len(rows))))
        self.assertEqual((await self.store.get_api(api.id)).last_used_at, utc_iso(T0 + 5))

    async def test_ids_follow_on_after_deleted_rows_and_windows_find_them(self) -> None:
        api = await self.store.create_api(api_fields(1))
        await self.store.insert_logs([log_row(api.id, T0 + i) for i in range(40)], {})
        await self.store.run_write("test_delete", lambda c: c.execute(
            "DELETE FROM request_logs WHERE id > 30"))
        await self.store.insert_logs([log_row(api.id, T0 + 1000 + i) for i in range(40)], {})
        # a window over the second batch only: found through the id spans just noted
        items, _ = await logs.logs_page(self.store, api.id, 100, None, None,
                                        T0 + 1000, T0 + 2000)
        self.assertEqual(sorted(r["created_at"] for r in items),
                         [T0 + 1000 + i for i in range(40)])

    async def test_a_value_json_cannot_carry_is_written_as_before(self) -> None:
        api = await self.store.create_api(api_fields(1))
        two = await self.store.create_api(api_fields(2))
        rows = [log_row(api.id, T0, ttfb_ms=math.nan), log_row(api.id, T0 + 1, ttfb_ms=math.inf),
                log_row(two.id, T0 + 2)]
        await self.store.insert_logs(rows, {api.id: T0 + 1, two.id: T0 + 2})
        got = await self.stored()
        ttfb = 1 + len(LOG_COLUMNS) + LOG_COLUMNS.index("ttfb_ms")
        # NaN: as each driver binds it (sqlite3: NULL; psycopg: NaN, a float8 value)
        nan = got[0][ttfb]
        self.assertTrue(nan is None if self.engine == "sqlite" else math.isnan(nan))
        self.assertEqual([r[ttfb] for r in got[1:]], [math.inf, 5.0])
        self.assertEqual((await self.store.get_api(two.id)).last_used_at, utc_iso(T0 + 2))
        self.assertEqual((await self.store.get_api(api.id)).last_used_at, utc_iso(T0 + 1))

    async def test_an_empty_batch_writes_nothing(self) -> None:
        await self.store.insert_logs([], {})
        self.assertEqual(await self.stored(), [])


class LogBatchPostgresTests(OnPostgres, LogBatchTests):
    """The same batches on PostgreSQL: multi-row INSERTs, first id from RETURNING."""
