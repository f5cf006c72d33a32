"""Token budgets across nodes: two nodes (two stores, registries, key states) on one
database spend one key's budget. Every request of a budgeted key is stored on its own,
atomically; the stored sum is exact and the key is refused on both once spent."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from flm.gateway.registry import Registry
from flm.observe.budgets import DAY
from tests.keys_harness import T0, KeysHarness, usage_json
from tests.test_nodes_sync import POLL, node


class BudgetAcrossNodesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a = node(self)
        self.b = node(self, self.a)
        self.api = self.a.create_api()
        self.key = self.a.ok("POST", f"/api/apis/{self.api['id']}/keys",
                             {"name": "team", "daily_token_budget": 1000}, status=201)
        self.b.advance(POLL)  # b serves the API and knows the key

    def send(self, h: KeysHarness, tokens: int) -> int:
        return h.send(self.api, self.key["key"], answer=usage_json(tokens, 0)).status

    def stored(self) -> tuple[int, int]:
        day = int(T0 // DAY)
        rows = self.successResultOf(self.a.store.key_usage_since(day))
        [(requests, tokens)] = [(r, t) for k, d, r, t in rows if k == self.key["id"]]
        return requests, tokens

    def test_the_sum_is_exact_and_both_refuse_once_spent(self) -> None:
        sent = 0
        for i in range(9):  # interleaved, each node writing its charges in its own time
            h = (self.a, self.b)[i % 2]
            self.assertEqual(self.send(h, 100), 200)
            sent += 100
            if i % 3 == 2:
                h.flush()
        self.a.flush()
        self.b.flush()
        self.assertEqual(self.stored(), (9, sent))
        self.a.flush()  # a's next read of the totals: b's last charge is in
        # 900 of 1000 spent across both: each node knows, though it served only some
        self.assertEqual(self.a.registry.keys.usage(self.key["id"])[1], 900)
        self.assertEqual(self.b.registry.keys.usage(self.key["id"])[1], 900)
        self.assertEqual(self.send(self.a, 100), 200)  # the last 100
        self.a.flush()
        self.assertEqual(self.stored(), (10, 1000))
        self.assertEqual(self.send(self.a, 1), 429)
        self.b.flush()  # b's once-a-second read of the budgeted keys it serves
        self.assertEqual(self.send(self.b, 1), 429)
        self.assertEqual(self.stored(), (10, 1000))

    def test_a_charge_is_stored_just_after_the_response_not_batched(self) -> None:
        self.a.budgets.startService()
        self.addCleanup(self.a.budgets.stopService)
        self.assertEqual(self.send(self.a, 70), 200)
        self.a.advance(0)  # the next reactor turn, not the next second
        self.assertEqual(self.stored(), (1, 70))
        self.assertEqual(self.a.registry.keys.pending, {})  # not in the batched counts

    def test_keys_without_a_budget_keep_batched_counting(self) -> None:
        self.assertEqual(self.a.send(self.api, self.api["key"], answer=usage_json(5, 5)).status,
                         200)
        self.assertEqual(list(self.a.registry.keys.charges), [])
        self.assertEqual(len(self.a.registry.keys.pending), 1)

    def test_each_stored_charge_brings_back_every_nodes_total(self) -> None:
        self.assertEqual(self.send(self.a, 900), 200)
        self.successResultOf(self.a.budgets.write())
        self.assertEqual(self.send(self.b, 50), 200)  # b had not heard of a's 900
        self.successResultOf(self.b.budgets.write())  # no refresh: the charge's answer
        self.assertEqual(self.b.registry.keys.usage(self.key["id"])[1], 950)

    def test_a_charge_of_a_key_deleted_meanwhile_is_dropped_not_retried(self) -> None:
        self.assertEqual(self.send(self.a, 10), 200)
        self.a.call("DELETE", f"/api/apis/{self.api['id']}")  # its keys go with it
        self.successResultOf(self.a.budgets.write())
        self.assertEqual(list(self.a.registry.keys.charges), [])
        self.assertIsNone(self.a.budgets.last_error)

    def test_every_node_shows_the_usage_of_all_nodes(self) -> None:
        """Key usage in the admin API: stored totals plus this node's not stored yet."""
        self.patch(Registry, "shared", True)  # several nodes (PostgreSQL)
        for h, n in ((self.a, 3), (self.b, 2)):
            for _ in range(n):
                self.assertEqual(self.send(h, 10), 200)  # budgeted: stored one by one
                self.assertEqual(h.send(self.api, self.api["key"],  # batched
                                        answer=usage_json(1, 1)).status, 200)
        self.a.flush()
        self.b.flush()
        self.assertEqual(self.b.send(self.api, self.api["key"], answer=usage_json(1, 1)).status,
                         200)  # one more on b, not stored yet
        url = f"/api/apis/{self.api['id']}/keys"
        for h, default_requests in ((self.a, 5), (self.b, 6)):
            usage = {k["name"]: k["usage"] for k in h.ok("GET", url)["items"]}
            self.assertEqual(usage["team"]["requests_today"], 5)
            self.assertEqual(usage["team"]["tokens_today"], 50)
            self.assertEqual(usage["default"]["requests_today"], default_requests)
            self.assertEqual(h.ok("GET", f"{url}/default")["usage"]["requests_today"],
                             default_requests)
