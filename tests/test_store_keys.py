"""The store's key and backend queries, on SQLite and on PostgreSQL: conflicts found from
either driver's error, the ``default`` key mirrored in its API, usage added atomically
(keys deleted meanwhile skipped), the ``default`` backend written at every start."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from flm.store import Conflict, Store
from tests.pg import OnPostgres, OnSQLite
from tests.test_store import T0, api_fields


class KeyStoreTests(OnSQLite, TestCase):
    def setUp(self) -> None:
        self.store = Store(self.database(), now=lambda: T0)
        self.store.startService()
        self.addCleanup(self.store.stopService)

    async def test_keys_and_their_conflicts(self) -> None:
        api = await self.store.create_api(api_fields(1))
        other = await self.store.create_api(api_fields(2))
        default = (await self.store.keys_of(api.id))[0]
        self.assertEqual((default.name, default.key_hash), ("default", api.key_hash))
        ci = await self.store.create_key(api.id, "ci", "h-ci", "p-ci", daily_token_budget=10,
                                         expires_at=T0 + 0.25)
        self.assertEqual((ci.daily_token_budget, ci.expires_at), (10, T0 + 0.25))
        with self.assertRaises(Conflict) as e:
            await self.store.create_key(api.id, "ci", "h-other", "p")
        self.assertEqual(e.exception.field, "name")
        await self.store.create_key(other.id, "ci", "h-other", "p")  # names are per API
        with self.assertRaises(Exception) as e:  # a secret's hash is unique, not a name
            await self.store.create_key(other.id, "dup", "h-ci", "p")
        self.assertNotIsInstance(e.exception, Conflict)
        with self.assertRaises(Conflict):
            await self.store.update_key(ci.id, {"name": "default"})
        self.assertEqual(await self.store.get_key(api.id, "ci"), ci)
        self.assertEqual(await self.store.get_key(api.id, str(ci.id)), ci)
        self.assertEqual([k.name for k in await self.store.keys_of(api.id)], ["default", "ci"])

    async def test_a_new_default_secret_goes_to_its_api(self) -> None:
        api = await self.store.create_api(api_fields(1))
        default = (await self.store.keys_of(api.id))[0]
        record = await self.store.update_key(default.id, {"key_hash": "h-new", "prefix": "p-new",
                                                          "old_hash": api.key_hash,
                                                          "grace_until": T0 + 60})
        self.assertEqual((record.key_hash, record.old_hash), ("h-new", api.key_hash))
        self.assertEqual(((await self.store.get_api(api.id)).key_hash,
                          (await self.store.get_api(api.id)).key_prefix), ("h-new", "p-new"))
        self.assertIsNone(await self.store.update_key(default.id + 100, {"name": "x"}))

    async def test_usage_adds_up_and_skips_deleted_keys(self) -> None:
        api = await self.store.create_api(api_fields(1))
        key = await self.store.create_key(api.id, "ci", "h-ci", "p-ci")
        await self.store.add_key_usage({(key.id, 10): [1, 5], (key.id, 11): [2, 7],
                                        (key.id + 50, 10): [1, 1]}, {key.id: "t1"})
        await self.store.add_key_usage({(key.id, 10): [3, 100]}, {})
        await self.store.add_key_usage({}, {})
        self.assertEqual(sorted(await self.store.key_usage_since(10)),
                         [(key.id, 10, 4, 105), (key.id, 11, 2, 7)])
        self.assertEqual(await self.store.key_usage_since(11), [(key.id, 11, 2, 7)])
        self.assertEqual((await self.store.get_key(api.id, "ci")).last_used_at, "t1")
        await self.store.delete_api(api.id)  # keys and usage go with it (foreign keys)
        self.assertEqual(await self.store.key_usage_since(0), [])

    async def test_backends(self) -> None:
        fields = {"url": "http://127.0.0.1:11434", "kind": "ollama", "max_concurrent": 1}
        first = await self.store.put_default_backend(fields)
        self.assertEqual(await self.store.put_default_backend(fields), first)  # unchanged
        moved = await self.store.put_default_backend({**fields, "max_concurrent": 2})
        self.assertEqual(moved.max_concurrent, 2)
        gpu = await self.store.create_backend({"name": "gpu", "url": "http://127.0.0.1:8000",
                                               "kind": "openai", "max_concurrent": 4,
                                               "enabled": False})
        self.assertIs(gpu.enabled, False)
        with self.assertRaises(Conflict):
            await self.store.create_backend({"name": "gpu", "url": "http://x", "kind": "openai",
                                             "max_concurrent": 1})
        self.assertEqual([b.name for b in await self.store.list_backends()], ["default", "gpu"])
        changed = await self.store.update_backend("gpu", {"enabled": True, "weight": 3})
        self.assertEqual((changed.enabled, changed.weight), (True, 3))
        self.assertIsNone(await self.store.update_backend("nope", {"weight": 1}))
        api = await self.store.create_api({**api_fields(1), "backends": ("gpu",)})
        self.assertEqual(await self.store.apis_naming(), [(api.id, "api-1", ["gpu"])])
        self.assertIs(await self.store.delete_backend("gpu"), True)
        self.assertIs(await self.store.delete_backend("gpu"), False)

    async def test_flags_read_back_as_bools(self) -> None:
        api = await self.store.create_api(api_fields(1, allow_unknown_model=True, insecure=True))
        self.assertIs(api.allow_unknown_model, True)
        self.assertIs(api.insecure, True)

        def raw(c: Any) -> Any:
            return c.execute("SELECT allow_unknown_model, insecure FROM apis").fetchone()
        self.assertEqual(tuple(await self.store.run_read("t", raw)), (1, 1))


class KeyStorePostgresTests(OnPostgres, KeyStoreTests):
    """The same on PostgreSQL."""
