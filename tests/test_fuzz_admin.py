"""Admin payloads from hypothesis against the Klein app (``StubTreq``, a real temporary
store), and a state machine of API operations in any order.

Payloads: never a 500; every 4xx has the contract's shape; every 422 names the field first.
State machine: after every step the store, the registry's running set, its config cache
and the ports listened on (a memory reactor) agree, and only the latest key of each API
opens it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError

from flm import keys
from flm.admin.apis import Apis
from flm.admin.app import AdminApp
from flm.gateway.admission import BackendGate
from flm.gateway.registry import Registry
from flm.gateway.resource import Upstream
from tests.test_admin_apis import (
    BASE,
    TOKEN,
    AdminTestCase,
    FakeModels,
    InlineReactor,
    healthy,
    inline_store,
)

FIELDS = ["name", "model", "host", "port", "max_concurrent", "max_queue", "queue_timeout_s",
          "upstream_timeout_s", "rate_limit_rpm", "priority", "allow_unknown_model", "start",
          "status", "id", "insecure", "tls_cert", "tls_key"]
PORTS = list(range(47600, 47606))

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, -1, 65535, 65536, 1024, 1025, 100_000, 100_001, 86_400, 86_401,
                     1_000_000, 1_000_001, -100, 100, 101, -101]),
    st.floats(allow_nan=False), st.sampled_from([0.0, 0.001, 1e-300, 1e308, -0.0, 86400.0]),
    st.text(max_size=20), st.sampled_from(["llama3.2", "qwen2.5:0.5b", "chat", "127.0.0.1",
                                           "::1", "0.0.0.0", "running", "stopped", "error",
                                           "a" * 65, "\ud800", "\x00", "1abc", "x" * 201]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))
VALID = {"name": st.from_regex(r"\A[A-Za-z][A-Za-z0-9._-]{0,10}\Z"),
         "model": st.sampled_from(["llama3.2", "qwen2.5:0.5b", "other:7b"]),
         "host": st.sampled_from(["127.0.0.1", "::1"]), "port": st.integers(47700, 47720),
         "max_concurrent": st.integers(1, 1024), "max_queue": st.integers(0, 100_000),
         "queue_timeout_s": st.floats(0.001, 86_400), "upstream_timeout_s": st.integers(1, 86_400),
         "rate_limit_rpm": st.one_of(st.none(), st.integers(1, 1_000_000)),
         "priority": st.integers(-100, 100), "allow_unknown_model": st.booleans(),
         "start": st.just(False)}


@st.composite
def near_valid(draw: Any) -> dict[str, Any]:
    """A valid payload, with at most one field given something arbitrary."""
    payload = {"name": draw(VALID["name"]), "model": draw(VALID["model"])}
    for field in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=4, unique=True)):
        payload[field] = draw(VALID[field])
    if draw(st.booleans()):
        payload[draw(KEYS)] = draw(JSON_VALUES)
    return payload


PAYLOADS = st.one_of(st.dictionaries(KEYS, JSON_VALUES, max_size=6), near_valid())
RAW_BODIES = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"", b"{", b"[]", b"null", b"1", b'"x"', b'{"port": NaN}',
                     b'{"port": Infinity}', b'{"port": 1e999}', b"[" * 20000,
                     b'{"port": ' + b"9" * 10000 + b"}", b'{"name": "\\ud800"}',
                     b'{"name": "a", "name": "b"}', b"\xef\xbb\xbf{}", b"{}" * 2]))
SETTINGS = settings(derandomize=True, deadline=None, max_examples=120,
                    suppress_health_check=list(HealthCheck))


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the request did not finish"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class PayloadTests(AdminTestCase):
    """Every answer to arbitrary input is a contract answer, never a 500."""

    def setUp(self) -> None:
        super().setUp()
        self.api = self.create("target", start=False)

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             token: str | None = TOKEN, headers: dict[str, str] | None = None
             ) -> tuple[int, Any, Any]:
        """As the base class's, but a redirect is returned, not followed."""
        h = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        d = self.stub.request(method, BASE + path, headers=h, data=data, allow_redirects=False)
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        self.assertNotIn(b"Traceback", content)
        if 300 <= response.code < 400:
            self.assertTrue(response.headers.getRawHeaders(b"location"), (path, content))
        elif response.code != 204:
            self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                             [b"application/json"], content)
        return response.code, json.loads(content) if content else None, response.headers

    def check(self, method: str, path: str, payload: Any = None, raw: bytes | None = None
              ) -> tuple[int, Any]:
        status, body, _ = self.call(method, path, payload, raw=raw)
        event(f"{method} {status}")
        self.assertLess(status, 500, body)
        if status >= 400:
            self.assertEqual(set(body), {"error"}, body)
            self.assertEqual(set(body["error"]), {"code", "message"}, body)
            code, message = body["error"]["code"], body["error"]["message"]
            self.assertRegex(code, r"^[a-z][a-z0-9_]*$")
            self.assertTrue(isinstance(message, str) and message, body)
            if status == 422 and code != "invalid_body":
                named = [str(k)[:64] for k in (payload or {})] + ["name", "model", "limit",
                                                                 "cursor", "status", "port"]
                self.assertTrue(any(message.startswith(f + ":") for f in named), body)
        return status, body

    def test_merged_slashes_redirect_has_a_location(self) -> None:
        """werkzeug redirects ``/api/apis//start``; the answer lacked its Location."""
        status, body, headers = self.call("GET", "/api/apis//start")
        self.assertEqual(status, 308)
        self.assertEqual(headers.getRawHeaders(b"location"), [BASE.encode() + b"/api/apis/start"])
        self.assertEqual(body["error"]["code"], "moved")

    @SETTINGS
    @given(payload=PAYLOADS)
    def test_create(self, payload: dict[str, Any]) -> None:
        status, body = self.check("POST", "/api/apis", payload)
        if status == 201:
            self.assertTrue(body["key"].startswith("flm-"))
            self.call("DELETE", f"/api/apis/{body['id']}")

    @SETTINGS
    @given(payload=PAYLOADS)
    def test_update(self, payload: dict[str, Any]) -> None:
        status, body = self.check("PATCH", "/api/apis/target", payload)
        if status == 200 and body["name"] != "target":
            self.call("PATCH", f"/api/apis/{body['id']}", {"name": "target"})

    @SETTINGS
    @given(raw=RAW_BODIES, method=st.sampled_from(["POST", "PATCH"]))
    def test_raw_bodies(self, raw: bytes, method: str) -> None:
        path = "/api/apis" if method == "POST" else "/api/apis/target"
        status, body = self.check(method, path, raw=raw)
        if status < 300 and method == "POST":
            self.call("DELETE", f"/api/apis/{body['id']}")

    @SETTINGS
    @given(ref=st.text(max_size=30), action=st.sampled_from(
        ["", "/start", "/stop", "/rotate-key", "/logs", "/metrics"]),
        method=st.sampled_from(["GET", "POST", "DELETE", "PATCH", "PUT"]))
    def test_refs_and_actions(self, ref: str, action: str, method: str) -> None:
        from urllib.parse import quote
        if method == "DELETE" and ref in ("target", str(self.api["id"])):
            return
        self.check(method, f"/api/apis/{quote(ref, safe='')}{action}", {})

    @SETTINGS
    @given(query=st.dictionaries(st.sampled_from(["limit", "cursor", "status", "x"]),
                                 st.text(max_size=12), max_size=3))
    def test_list_query(self, query: dict[str, str]) -> None:
        from urllib.parse import urlencode
        status, body = self.check("GET", "/api/apis?" + urlencode(query))
        if status == 200:
            self.assertEqual(set(body), {"items", "next_cursor", "total"})


class TrackingReactor(InlineReactor):
    """Knows which ports are listening now, not only which ever were."""

    def __init__(self) -> None:
        super().__init__()
        self.active: dict[int, Any] = {}

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.active:  # as the OS does: one listening socket per port
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        listener = super().listenTCP(port, factory, backlog, interface)
        self.active[port] = factory

        def stop() -> Deferred[None]:
            self.active.pop(port, None)
            return succeed(None)
        listener.stopListening = stop
        return listener


class AdminMachine(RuleBasedStateMachine):
    apis = Bundle("apis")

    def __init__(self) -> None:
        super().__init__()
        self.reactor = TrackingReactor()
        self.dir = Path(tempfile.mkdtemp(prefix="flm-fuzz-admin-"))
        self.store = inline_store(self.dir / "flm.sqlite3", self.reactor)
        upstream = Upstream(agent=None, base_url=b"http://backend", paths=frozenset(),  # type: ignore[arg-type]
                            gate=BackendGate(1, self.reactor), clock=self.reactor,
                            record=lambda row: None)
        self.registry = Registry(self.store, upstream, reactor=self.reactor, cache_size=100,
                                 grace_period=0.0,
                                 site_limits={"max_body": 1024, "idle_timeout": 60.0})
        apis = Apis(self.store, self.registry, FakeModels(), api_host="127.0.0.1",
                    first_port=PORTS[0], reserved_ports={8420})
        self.stub = StubTreq(AdminApp(token=TOKEN, apis=apis, health=healthy).resource())
        self.keys: dict[int, str] = {}  # id -> the latest key
        self.old_keys: dict[int, list[str]] = {}
        self.n = 0

    def teardown(self) -> None:
        self.store.stopService()
        shutil.rmtree(self.dir, True)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        d = self.stub.request(method, BASE + path, headers={"Authorization": f"Bearer {TOKEN}"},
                              data=None if body is None else json.dumps(body).encode())
        self.stub.flush()
        response = result_of(d)
        content = result_of(response.content())
        assert response.code < 500, (method, path, body, content)
        event(f"{method} {path.split('/')[-1] if not path.endswith('apis') else 'apis'} "
              f"{response.code}")
        data = json.loads(content) if content else None
        if response.code >= 400:
            assert set(data) == {"error"} and set(data["error"]) == {"code", "message"}, data
        return response.code, data

    # rules

    @initialize(target=apis)
    def first(self) -> Any:
        return self.create(port=PORTS[0], start=True, model="llama3.2")

    @rule(target=apis, port=st.one_of(st.none(), st.sampled_from(PORTS)), start=st.booleans(),
          model=st.sampled_from(["llama3.2", "qwen2.5:0.5b", "unknown-model"]))
    def create(self, port: int | None, start: bool, model: str) -> Any:
        self.n += 1
        body: dict[str, Any] = {"name": f"api{self.n}", "model": model, "start": start}
        if port is not None:
            body["port"] = port
        status, data = self.call("POST", "/api/apis", body)
        if model == "unknown-model":
            assert status == 422 and data["error"]["message"].startswith("model:"), data
            return None
        if port is not None and status == 409:
            assert data["error"]["code"] == "port_taken", data
            return None
        assert status == 201, (status, data)
        expected = ("stopped" if not start else
                    "error" if data["port"] in self.reactor.busy_ports else "running")
        assert data["status"] == expected, (data, self.reactor.busy_ports)
        self.keys[data["id"]] = data["key"]
        return data["id"]

    @rule(api=apis, fields=st.fixed_dictionaries({}, optional={
        "port": st.sampled_from(PORTS), "max_concurrent": st.integers(1, 4),
        "max_queue": st.integers(0, 3), "model": st.sampled_from(["llama3.2", "qwen2.5:0.5b"]),
        "status": st.sampled_from(["running", "stopped"]), "priority": st.integers(-3, 3),
        "rate_limit_rpm": st.one_of(st.none(), st.integers(1, 10))}))
    def update(self, api: Any, fields: dict[str, Any]) -> None:
        if api is None:
            return
        status, data = self.call("PATCH", f"/api/apis/{api}", fields)
        if status == 404:
            assert api not in self.keys
            return
        if status == 409:
            assert data["error"]["code"] == "port_taken", data
            return
        assert status == 200, (status, data)
        for field, value in fields.items():
            if field != "status":
                assert data[field] == value, (field, data)

    @rule(api=apis)
    def rotate(self, api: Any) -> None:
        if api is None:
            return
        status, data = self.call("POST", f"/api/apis/{api}/rotate-key")
        if api not in self.keys:
            assert status == 404, data
            return
        assert status == 200, data
        self.old_keys.setdefault(api, []).append(self.keys[api])
        self.keys[api] = data["key"]

    @rule(api=apis, action=st.sampled_from(["start", "stop"]))
    def start_or_stop(self, api: Any, action: str) -> None:
        if api is None:
            return
        status, data = self.call("POST", f"/api/apis/{api}/{action}")
        if api not in self.keys:
            assert status == 404, data
            return
        if action == "start" and status == 409:
            assert data["error"]["code"] == "port_taken"
            return
        assert status == 200, data
        assert data["status"] == ("running" if action == "start" else "stopped"), data

    @rule(api=apis)
    def delete(self, api: Any) -> None:
        if api is None:
            return
        status, data = self.call("DELETE", f"/api/apis/{api}")
        if api in self.keys:
            assert status == 204, data
            del self.keys[api]
        else:
            assert status == 404, data

    @rule(port=st.sampled_from(PORTS), busy=st.booleans())
    def another_program_holds_a_port(self, port: int, busy: bool) -> None:
        (self.reactor.busy_ports.add if busy else self.reactor.busy_ports.discard)(port)

    # what must always hold

    @invariant()
    def store_registry_and_ports_agree(self) -> None:
        records = result_of(Deferred.fromCoroutine(self.store.list_apis(limit=1000)))[0]
        assert {r.id for r in records} == set(self.keys), (records, self.keys)
        running = {r.id: r for r in records if r.status == "running"}
        assert set(running) == set(self.registry.runtimes), (running, self.registry.runtimes)
        assert {r.port for r in running.values()} == set(self.reactor.active), \
            (running, self.reactor.active)
        assert len(self.registry.cache) == len(running)
        for api_id, record in running.items():
            runtime = self.registry.runtimes[api_id]
            # The runtime's own copy may lag on status and times (it is taken before the
            # port opens); everything the request path reads must be current.
            used = ("name", "host", "port", "model", "key_hash", "max_concurrent", "max_queue",
                    "queue_timeout_s", "upstream_timeout_s", "rate_limit_rpm", "priority")
            assert ([getattr(runtime.config, f) for f in used]
                    == [getattr(record, f) for f in used]), (runtime.config, record)
            assert runtime.port == record.port
            assert (runtime.gate.limit, runtime.gate.max_queue) == (
                record.max_concurrent, record.max_queue)
            assert (runtime.bucket.rpm if runtime.bucket else None) == record.rate_limit_rpm
            assert self.reactor.active[record.port] is runtime.site
            cached = self.registry.cache.by_port(record.port)
            assert cached == record, (cached, record)
            assert keys.matches(self.keys[api_id].encode(), cached.key_hash)
            for old in self.old_keys.get(api_id, []):
                assert not keys.matches(old.encode(), cached.key_hash)
        for record in records:
            assert record.status in ("running", "stopped", "error")
            assert (record.status == "error") == (record.status_reason is not None), record


AdminMachine.TestCase.settings = settings(derandomize=True, deadline=None, max_examples=80,
                                          stateful_step_count=30,
                                          suppress_health_check=list(HealthCheck))
TestAdminMachine = AdminMachine.TestCase
