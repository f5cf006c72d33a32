"""Migration 005 on a database made by the code before keys (migrations 001-004): the
API's key becomes its key named ``default`` and keeps working; log rows stay."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from flm import keys
from flm.store import migrations
from tests.keys_harness import KeysHarness

SECRET = "flm-" + "m" * 43


def old_database(path: Path) -> None:
    """Schema 001-004 as shipped, one API with its key hash, one log row."""
    conn = sqlite3.connect(path, isolation_level=None)
    for version, sql in migrations.available():
        if version > 4:
            break
        for statement in sql.split(";\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(
        "INSERT INTO apis (name, host, port, model, status, key_hash, key_prefix, "
        "max_concurrent, max_queue, queue_timeout_s, upstream_timeout_s, priority, "
        "allow_unknown_model, created_at, updated_at, last_used_at) VALUES ('old', "
        "'127.0.0.1', 47499, 'llama3.2', 'running', ?, ?, 1, 8, 60, 300, 0, 0, "
        "'2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z', "
        "'2025-06-01T00:00:00.000Z')", (keys.hash_key(SECRET), keys.key_prefix(SECRET)))
    conn.execute("INSERT INTO request_logs (api_id, created_at, method, path, status, "
                 "bytes_in, bytes_out) VALUES (1, 1700000000, 'POST', '/v1/x', 200, 1, 1)")
    conn.close()


class MigrationTests(SynchronousTestCase):
    def test_an_old_database_keeps_its_key_as_default(self) -> None:
        h = KeysHarness(self)
        self.addCleanup(shutil.rmtree, h.dir, True)
        self.addCleanup(h.close)
        h.close()
        for extra in ("", "-wal", "-shm"):
            (h.dir / f"flm.sqlite3{extra}").unlink(missing_ok=True)
        old_database(h.dir / "flm.sqlite3")
        h._open()  # the new code opens it: migrates, restores the running API
        api = h.ok("GET", "/api/apis/old")
        self.assertEqual(api["key_prefix"], keys.key_prefix(SECRET))
        items = h.ok("GET", f"/api/apis/{api['id']}/keys")["items"]
        self.assertEqual([(k["name"], k["prefix"], k["status"], k["last_used_at"])
                          for k in items],
                         [("default", keys.key_prefix(SECRET), "active",
                           "2025-06-01T00:00:00.000Z")])
        self.assertEqual(h.send(api, SECRET).status, 200)
        self.assertEqual(h.send(api, "flm-" + "x" * 43).status, 401)
        h.flush()
        rows = h.ok("GET", f"/api/apis/{api['id']}/logs")["items"]
        self.assertEqual([(r["key_name"], r["path"]) for r in rows],
                         [("default", "/v1/chat/completions"), (None, "/v1/x")])
        # and a key made now works beside it
        made = h.ok("POST", f"/api/apis/{api['id']}/keys", {"name": "new"}, status=201)
        self.assertEqual(h.send(api, made["key"]).status, 200)
