"""Keys (issue 11): the admin API's keys, and what a model client meets on the API port,
through the production request path (``ApiSite`` over in-memory transports), a real
store, and the reactor's clock."""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from flm import keys
from tests.keys_harness import DAY, KeysHarness, usage_json, usage_stream

KEY_FIELDS = {"id", "name", "prefix", "status", "created_at", "expires_at", "last_used_at",
              "grace_until", "rate_limit_rpm", "tpm_limit", "daily_token_budget",
              "monthly_token_budget", "usage"}
STREAM = json.dumps({"model": "x", "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]}).encode()


class KeysTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = KeysHarness(self)
        self.addCleanup(self.h.close)
        self.api = self.h.create_api()
        self.base = f"/api/apis/{self.api['id']}/keys"

    def new_key(self, name: str, **fields: Any) -> dict[str, Any]:
        return self.h.ok("POST", self.base, {"name": name, **fields}, status=201)

    def assert_refused(self, response: Any, status: int, code: str) -> None:
        self.assertEqual(response.status, status, response.raw)
        self.assertEqual(response.json["error"]["code"], code, response.raw)


class AdminKeysTests(KeysTestCase):
    def test_an_api_starts_with_its_key_as_default(self) -> None:
        items = self.h.ok("GET", self.base)["items"]
        self.assertEqual([k["name"] for k in items], ["default"])
        default = items[0]
        self.assertEqual(set(default), KEY_FIELDS)
        self.assertEqual(default["status"], "active")
        self.assertEqual(default["prefix"], self.api["key_prefix"])
        self.assertEqual(default["usage"], {"requests_today": 0, "tokens_today": 0,
                                            "tokens_month": 0})
        self.assertEqual(self.h.send(self.api, self.api["key"]).status, 200)

    def test_create_shows_the_secret_once(self) -> None:
        made = self.new_key("ci", rate_limit_rpm=10, expires_at="2030-01-01T00:00:00Z")
        self.assertEqual(set(made), KEY_FIELDS | {"key"})
        self.assertTrue(made["key"].startswith(made["prefix"]))
        self.assertEqual(made["expires_at"], "2030-01-01T00:00:00.000Z")
        self.assertEqual(made["rate_limit_rpm"], 10)
        for path in (f"{self.base}/ci", f"{self.base}/{made['id']}"):
            shown = self.h.ok("GET", path)
            self.assertNotIn("key", shown)
            self.assertEqual(shown["id"], made["id"])
        listed = json.dumps(self.h.ok("GET", self.base))
        self.assertNotIn(made["key"], listed)
        self.assertNotIn(keys.hash_key(made["key"]), listed)
        self.assertEqual(self.h.send(self.api, made["key"]).status, 200)

    def test_bad_input_is_422_naming_the_field_and_duplicates_409(self) -> None:
        self.new_key("ci")
        status, body = self.h.call("POST", self.base, {"name": "ci"})
        self.assertEqual((status, body["error"]["code"]), (409, "name_taken"))
        for payload, field in (({}, "name"), ({"name": "1x"}, "name"),
                               ({"name": "a", "expires_at": "soon"}, "expires_at"),
                               ({"name": "a", "expires_at": 5}, "expires_at"),
                               ({"name": "a", "tpm_limit": 0}, "tpm_limit"),
                               ({"name": "a", "rate_limit_rpm": "5"}, "rate_limit_rpm"),
                               ({"name": "a", "daily_token_budget": -1}, "daily_token_budget"),
                               ({"name": "a", "monthly_token_budget": True},
                                "monthly_token_budget"),
                               ({"name": "a", "colour": 1}, "colour")):
            status, body = self.h.call("POST", self.base, payload)
            self.assertEqual(status, 422, (payload, body))
            self.assertTrue(body["error"]["message"].startswith(f"{field}:"), body)
        for grace in (-1, 604801, "1", True):
            status, body = self.h.call("POST", f"{self.base}/ci/rotate", {"grace_s": grace})
            self.assertEqual(status, 422, body)
            self.assertTrue(body["error"]["message"].startswith("grace_s:"), body)
        status, body = self.h.call("PATCH", f"{self.base}/ci", {"name": "default"})
        self.assertEqual((status, body["error"]["code"]), (409, "name_taken"))
        for path in (f"{self.base}/nope", f"{self.base}/999", "/api/apis/nope/keys"):
            self.assertEqual(self.h.call("GET", path)[0], 404)

    def test_update_applies_at_once(self) -> None:
        made = self.new_key("ci")
        self.assertEqual(self.h.send(self.api, made["key"]).status, 200)
        changed = self.h.ok("PATCH", f"{self.base}/ci", {"name": "ci2", "rate_limit_rpm": 1,
                                                          "expires_at": None})
        self.assertEqual((changed["name"], changed["rate_limit_rpm"]), ("ci2", 1))
        self.assertEqual(self.h.send(self.api, made["key"]).status, 200)
        self.assert_refused(self.h.send(self.api, made["key"]), 429, "rate_limited")
        self.h.ok("PATCH", f"{self.base}/ci2", {"expires_at": "2020-01-01T00:00:00Z"})
        self.assert_refused(self.h.send(self.api, made["key"]), 401, "key_expired")
        self.assertEqual(self.h.ok("GET", f"{self.base}/ci2")["status"], "expired")

    def test_revoke_at_once_and_listed_as_revoked(self) -> None:
        made = self.new_key("ci")
        revoked = self.h.ok("DELETE", f"{self.base}/ci")
        self.assertEqual(revoked["status"], "revoked")
        self.assert_refused(self.h.send(self.api, made["key"]), 401, "invalid_api_key")
        self.assertEqual(self.h.send(self.api, self.api["key"]).status, 200)
        statuses = {k["name"]: k["status"] for k in self.h.ok("GET", self.base)["items"]}
        self.assertEqual(statuses, {"default": "active", "ci": "revoked"})
        self.assertEqual(self.h.call("POST", f"{self.base}/ci/rotate")[0], 409)

    def test_revoking_default_leaves_no_working_key_until_one_is_made(self) -> None:
        self.h.ok("DELETE", f"{self.base}/default")
        self.assert_refused(self.h.send(self.api, self.api["key"]), 401, "invalid_api_key")
        made = self.new_key("next")
        self.assertEqual(self.h.send(self.api, made["key"]).status, 200)
        self.assertEqual(self.h.ok("GET", f"/api/apis/{self.api['id']}")["key_prefix"],
                         self.api["key_prefix"])

    def test_rotate_with_grace(self) -> None:
        made = self.new_key("ci")
        rotated = self.h.ok("POST", f"{self.base}/ci/rotate", {"grace_s": 60})
        self.assertNotEqual(rotated["key"], made["key"])
        self.assertEqual(rotated["grace_until"], "2026-03-15T12:01:00.000Z")
        for secret in (made["key"], rotated["key"]):
            self.assertEqual(self.h.send(self.api, secret).status, 200)
        self.h.advance(60)
        self.assert_refused(self.h.send(self.api, made["key"]), 401, "invalid_api_key")
        self.assertEqual(self.h.send(self.api, rotated["key"]).status, 200)
        self.assertIsNone(self.h.ok("GET", f"{self.base}/ci")["grace_until"])

    def test_rotate_key_on_the_api_rotates_default(self) -> None:
        got = self.h.ok("POST", f"/api/apis/{self.api['id']}/rotate-key", {"grace_s": 30})
        self.assertTrue(got["key"].startswith(got["key_prefix"]))
        self.assertNotEqual(got["key_prefix"], self.api["key_prefix"])
        default = self.h.ok("GET", f"{self.base}/default")
        self.assertEqual(default["prefix"], got["key_prefix"])
        self.assertEqual(self.h.send(self.api, self.api["key"]).status, 200)
        self.h.advance(30)
        self.assert_refused(self.h.send(self.api, self.api["key"]), 401, "invalid_api_key")
        self.assertEqual(self.h.send(self.api, got["key"]).status, 200)
        # without a body: the old key stops at once
        again = self.h.ok("POST", f"/api/apis/{self.api['id']}/rotate-key")
        self.assert_refused(self.h.send(self.api, got["key"]), 401, "invalid_api_key")
        self.assertEqual(self.h.send(self.api, again["key"]).status, 200)

    def test_deleting_an_api_deletes_its_keys(self) -> None:
        self.new_key("ci")
        self.h.send(self.api, self.api["key"])
        self.h.flush()
        self.h.ok("DELETE", f"/api/apis/{self.api['id']}", status=204)

        def count(c: Any) -> tuple[int, int]:
            return (c.execute("SELECT count(*) FROM api_keys").fetchone()[0],
                    c.execute("SELECT count(*) FROM key_usage").fetchone()[0])
        self.assertEqual(self.successResultOf(self.h.store.run_read("count", count)), (0, 0))


class LimitTests(KeysTestCase):
    def test_per_key_rpm_and_the_apis_own_limit_for_all_keys(self) -> None:
        a = self.new_key("a", rate_limit_rpm=2)
        b = self.new_key("b")
        first = self.h.send(self.api, a["key"])
        self.assertEqual(first.header(b"x-ratelimit-remaining-requests"), b"1")
        self.assertEqual(self.h.send(self.api, a["key"]).status, 200)
        refused = self.h.send(self.api, a["key"])
        self.assert_refused(refused, 429, "rate_limited")
        self.assertEqual(refused.header(b"retry-after"), b"30")
        self.assertEqual(refused.header(b"x-ratelimit-remaining-requests"), b"0")
        self.assertEqual(self.h.send(self.api, b["key"]).status, 200)  # its own key
        self.assertIsNone(self.h.send(self.api, b["key"]).header(
            b"x-ratelimit-remaining-requests"))
        # the API's limit holds for its keys together
        self.h.ok("PATCH", f"/api/apis/{self.api['id']}", {"rate_limit_rpm": 1})
        self.h.advance(60)
        self.assertEqual(self.h.send(self.api, b["key"]).status, 200)
        self.assert_refused(self.h.send(self.api, a["key"]), 429, "rate_limited")

    def test_a_refused_request_consumes_nothing(self) -> None:
        a = self.new_key("a", rate_limit_rpm=1)
        spent = self.new_key("spent", daily_token_budget=1)
        self.h.send(self.api, spent["key"])  # 2 tokens: the budget is spent
        self.h.ok("PATCH", f"/api/apis/{self.api['id']}", {"rate_limit_rpm": 1})
        self.h.advance(60)
        calls = self.h.reached_backend()
        for _ in range(3):  # refused by its budget: the API's bucket is untouched
            self.assert_refused(self.h.send(self.api, spent["key"]), 429, "budget_exceeded")
        self.assertEqual(self.h.reached_backend(), calls)
        self.assertEqual(self.h.send(self.api, a["key"]).status, 200)
        # refused by the API's limit: the key's own bucket is untouched
        self.assert_refused(self.h.send(self.api, self.api["key"]), 429, "rate_limited")
        self.h.advance(60)
        self.assertEqual(self.h.send(self.api, a["key"]).status, 200)
        usage = self.h.ok("GET", f"{self.base}/spent")["usage"]
        self.assertEqual(usage, {"requests_today": 1, "tokens_today": 2, "tokens_month": 2})

    def test_tpm_from_the_backends_usage(self) -> None:
        k = self.new_key("k", tpm_limit=100)
        ok = self.h.send(self.api, k["key"], answer=usage_json(30, 50))
        self.assertEqual(ok.header(b"x-ratelimit-remaining-tokens"), b"100")
        self.h.advance(10)
        streamed = self.h.send(self.api, k["key"], body=STREAM, answer=usage_stream(10, 20),
                               stream=True)
        self.assertEqual(streamed.header(b"x-ratelimit-remaining-tokens"), b"20")
        self.assertNotIn(b'"usage"', streamed.body)  # the client did not ask for it
        refused = self.h.send(self.api, k["key"])
        self.assert_refused(refused, 429, "token_rate_limited")
        self.assertEqual(refused.header(b"retry-after"), b"50")  # the first 80 leave then
        self.h.advance(50)
        self.assertEqual(self.h.send(self.api, k["key"]).status, 200)

    def test_budgets_across_a_restart_streaming_and_not(self) -> None:
        k = self.new_key("k", daily_token_budget=100, monthly_token_budget=150)
        self.assertEqual(self.h.send(self.api, k["key"], answer=usage_json(30, 50)).status, 200)
        # within budget when it starts: it finishes, whatever it costs
        streamed = self.h.send(self.api, k["key"], body=STREAM, answer=usage_stream(15, 25),
                               stream=True)
        self.assertEqual(streamed.status, 200)
        self.assertIn(b"[DONE]", streamed.body)
        calls = self.h.reached_backend()
        refused = self.h.send(self.api, k["key"])
        self.assert_refused(refused, 429, "budget_exceeded")
        self.assertEqual(refused.header(b"retry-after"), b"%d" % (DAY / 2))  # next UTC day
        self.assertEqual(self.h.reached_backend(), calls)
        self.h.restart()
        self.assert_refused(self.h.send(self.api, k["key"]), 429, "budget_exceeded")
        usage = self.h.ok("GET", f"{self.base}/k")["usage"]
        self.assertEqual(usage, {"requests_today": 2, "tokens_today": 120, "tokens_month": 120})
        self.h.advance(DAY / 2)  # the next UTC day: 30 left this month
        self.assertEqual(self.h.send(self.api, k["key"], answer=usage_json(20, 20)).status, 200)
        refused = self.h.send(self.api, k["key"])
        self.assert_refused(refused, 429, "budget_exceeded")  # the month's, now
        self.assertEqual(refused.header(b"retry-after"), b"%d" % (DAY * 16))  # April 1st
        self.h.restart()
        self.assertEqual(self.h.ok("GET", f"{self.base}/k")["usage"],
                         {"requests_today": 1, "tokens_today": 40, "tokens_month": 160})
        self.assert_refused(self.h.send(self.api, k["key"]), 429, "budget_exceeded")
        self.assertIsNotNone(self.h.ok("GET", f"{self.base}/k")["last_used_at"])


class LogTests(KeysTestCase):
    def test_rows_name_their_key_and_filter_by_it(self) -> None:
        a = self.new_key("a")
        self.h.send(self.api, a["key"])
        self.h.send(self.api, self.api["key"])
        self.h.send(self.api, a["key"], answer=usage_json(5, 6))
        self.h.flush()
        rows = self.h.ok("GET", f"/api/apis/{self.api['id']}/logs")["items"]
        self.assertEqual([(r["key_id"], r["key_name"]) for r in rows],
                         [(a["id"], "a"), (a["id"] - 1, "default"), (a["id"], "a")])
        for ref in ("a", str(a["id"])):
            only = self.h.ok("GET", f"/api/apis/{self.api['id']}/logs?key={ref}")["items"]
            self.assertEqual([r["key_name"] for r in only], ["a", "a"])
        every = self.h.ok("GET", f"/api/logs?key={a['id']}")["items"]
        self.assertEqual(len(every), 2)
        self.assertEqual(self.h.call("GET", f"/api/apis/{self.api['id']}/logs?key=zz")[0], 422)
        self.assertEqual(self.h.call("GET", "/api/logs?key=a")[0], 422)
        self.h.advance(1)
        metrics = self.h.ok("GET", f"/api/apis/{self.api['id']}/metrics?key=a")
        self.assertEqual([(b["request_count"], b["prompt_tokens"]) for b in metrics["buckets"]],
                         [(2, 6)])

    def test_refusals_are_counted_by_reason(self) -> None:
        from flm.observe.prometheus import RuntimeCollector
        k = self.new_key("k", rate_limit_rpm=1, expires_at="2026-03-15T12:00:30Z")
        self.h.send(self.api, k["key"])
        self.h.send(self.api, k["key"])
        self.h.send(self.api, "flm-wrong")
        self.h.advance(30)
        self.h.send(self.api, k["key"])
        text = "".join(str(s) for m in RuntimeCollector(self.h.registry, None).collect()
                       if m.name == "flm_refused_requests" for s in m.samples)
        for reason in ("rate_limited", "key_expired", "invalid_api_key"):
            self.assertTrue(re.search(f"'reason': '{reason}'.*value=1", text), text)


