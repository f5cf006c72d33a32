"""Hypothesis state machine over an API's keys: create / rotate (with grace) / revoke /
expire / advance the clock. After every step, every secret ever given out is tried on the
running API (the production request path, in memory) and must work exactly when it should:
200, 401 ``key_expired``, or the uniform 401 ``invalid_api_key``."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.trial.unittest import SynchronousTestCase

from tests.keys_harness import KeysHarness

NAMES = ("a", "b", "c", "default")


class Secret:
    def __init__(self, key: str, name: str, until: float | None = None) -> None:
        self.key, self.name, self.until = key, name, until  # until: end of a grace period


class KeyMachine(RuleBasedStateMachine):
    case: SynchronousTestCase

    @initialize()
    def start(self) -> None:
        self.h = KeysHarness(self.case)
        self.api = self.h.create_api()
        self.base = f"/api/apis/{self.api['id']}/keys"
        self.secrets = [Secret(self.api["key"], "default")]
        self.revoked: set[str] = set()
        self.expires: dict[str, float | None] = {"default": None}

    def teardown(self) -> None:
        if hasattr(self, "h"):
            self.h.close()

    def now(self) -> float:
        return float(self.h.reactor.seconds())

    def current(self, name: str) -> Secret | None:
        """The newest secret of a key."""
        found = [s for s in self.secrets if s.name == name and s.until is None]
        return found[-1] if found else None

    @rule(name=st.sampled_from(NAMES), expires_in=st.one_of(st.none(), st.integers(1, 600)))
    def create(self, name: str, expires_in: int | None) -> None:
        expires = None if expires_in is None else self.now() + expires_in
        body: dict[str, Any] = {"name": name}
        if expires is not None:
            body["expires_at"] = expires_iso(expires)
        status, got = self.h.call("POST", self.base, body)
        if name in self.expires:
            assert status == 409, got
            return
        assert status == 201, got
        self.expires[name] = expires
        self.secrets.append(Secret(got["key"], name))

    @rule(name=st.sampled_from(NAMES), grace=st.sampled_from((0, 1, 30, 300)))
    def rotate(self, name: str, grace: int) -> None:
        status, got = self.h.call("POST", f"{self.base}/{name}/rotate", {"grace_s": grace})
        if name not in self.expires:
            assert status == 404, got
            return
        if name in self.revoked:
            assert status == 409, got
            return
        assert status == 200, got
        for s in self.secrets:
            if s.name == name:
                # The previous grace ends now; the current secret gets its own.
                s.until = min(s.until, self.now()) if s.until is not None else (
                    self.now() + grace)
        self.secrets.append(Secret(got["key"], name))

    @rule(name=st.sampled_from(NAMES))
    def revoke(self, name: str) -> None:
        status, got = self.h.call("DELETE", f"{self.base}/{name}")
        if name not in self.expires:
            assert status == 404, got
            return
        assert status == 200 and got["status"] == "revoked", got
        self.revoked.add(name)

    @rule(name=st.sampled_from(NAMES), expires_in=st.one_of(st.none(), st.integers(-5, 120)))
    def expire(self, name: str, expires_in: int | None) -> None:
        expires = None if expires_in is None else self.now() + expires_in
        status, got = self.h.call("PATCH", f"{self.base}/{name}",
                                  {"expires_at": None if expires is None
                                   else expires_iso(expires)})
        if name not in self.expires:
            assert status == 404, got
            return
        assert status == 200, got
        self.expires[name] = expires

    @rule(seconds=st.sampled_from((0.5, 1, 29, 30, 31, 61, 299, 600)))
    def advance(self, seconds: float) -> None:
        self.h.advance(seconds)

    def expected(self, s: Secret) -> str:
        now = self.now()
        if s.name in self.revoked or (s.until is not None and now >= s.until):
            return "invalid_api_key"
        expires = self.expires[s.name]
        if expires is not None and now >= expires:
            return "key_expired"
        return "ok"

    @invariant()
    def exactly_the_right_keys_work(self) -> None:
        if not hasattr(self, "h"):
            return
        for s in self.secrets:
            response = self.h.send(self.api, s.key)
            got = "ok" if response.status == 200 else response.json["error"]["code"]
            assert got == self.expected(s), (s.name, got, self.expected(s), response.raw)
        statuses = {k["name"]: k["status"] for k in self.h.ok("GET", self.base)["items"]}
        for name, status in statuses.items():
            want = "revoked" if name in self.revoked else (
                "expired" if self.expires[name] is not None
                and self.now() >= self.expires[name] else "active")
            assert status == want, (name, status, want)


def expires_iso(epoch: float) -> str:
    from flm.records import utc_iso
    return utc_iso(epoch)


class KeyStateMachineTest(SynchronousTestCase):
    def test_exactly_the_keys_that_should_work_do(self) -> None:
        KeyMachine.case = self
        machine = KeyMachine.TestCase
        machine.settings = settings(max_examples=40, stateful_step_count=15, deadline=None,
                                    derandomize=True, database=None,
                                    suppress_health_check=list(HealthCheck))
        machine("runTest").runTest()
