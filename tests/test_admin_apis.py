"""The admin API's ``/api/apis`` routes without sockets: ``StubTreq`` over the Klein app.

A real :class:`flm.store.Store` on a temporary file runs its adbapi interactions inline (a
thread pool that runs work at once and a reactor whose ``callFromThread`` calls at once), so
every request completes synchronously; API ports "listen" on a ``MemoryReactorClock``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from flm import keys
from flm.admin.apis import Apis, encode_cursor
from flm.admin.app import AdminApp
from flm.gateway.admission import BackendGate
from flm.gateway.registry import Registry
from flm.gateway.resource import Upstream
from flm.store import Store

TOKEN = "admin-test-token"
BASE = "http://flm.test"
FIRST_PORT = 47310
CONTRACT_FIELDS = {
    "id", "name", "port", "model", "status", "key_prefix", "created_at", "updated_at",
    "last_used_at", "max_concurrent", "max_queue", "queue_timeout_s", "upstream_timeout_s",
    "rate_limit_rpm", "priority", "allow_unknown_model",
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def free_port() -> int:
    """A port nothing listens on right now (other programs share this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InlineReactor(MemoryReactorClock):
    """Thread hops happen at once; chosen ports can be made to fail to listen."""

    def __init__(self) -> None:
        super().__init__()
        self.busy_ports: set[int] = set()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        if port in self.busy_ports:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        listener = super().listenTCP(port, factory, backlog, interface)
        # Real ports answer stopListening with a Deferred; MemoryReactor's with None.
        listener.stopListening = lambda: succeed(None)
        return listener

    def listening(self) -> list[int]:
        """Ports listened on, in order (a stopped one stays in the list)."""
        return [port for port, *_ in self.tcpServers]


class InlineThreadPool:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None],
                                 f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def inline_store(path: Path, reactor: InlineReactor) -> Store:
    store = Store(path, reactor=reactor)
    store.open()
    for pool in store._engine.pools():
        pool.threadpool = InlineThreadPool()
        pool.start()
    return store


class FakeModels:
    """The model cache as the admin API uses it: does the backend list this model?"""

    def __init__(self) -> None:
        self.names = {"llama3.2", "qwen2.5:0.5b"}
        self.reachable = True

    async def known(self, name: str) -> bool | None:
        if not self.reachable:
            return None
        return name in self.names


async def healthy() -> tuple[int, dict[str, Any]]:
    return 200, {"status": "ok"}


class AdminTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = InlineReactor()
        data = Path(tempfile.mkdtemp(prefix="flm-test-admin-"))
        self.addCleanup(shutil.rmtree, data, True)
        self.store = inline_store(data / "flm.sqlite3", self.reactor)
        self.addCleanup(self.store.stopService)
        upstream = Upstream(agent=None, base_url=b"http://backend", paths=frozenset(),  # type: ignore[arg-type]
                            gate=BackendGate(1, self.reactor), clock=self.reactor,
                            record=lambda row: None)
        self.registry = Registry(self.store, upstream, reactor=self.reactor, cache_size=100,
                                 grace_period=0.0,
                                 site_limits={"max_body": 1024, "idle_timeout": 60.0})
        self.models = FakeModels()
        apis = Apis(self.store, self.registry, self.models, api_host="127.0.0.1",
                    first_port=FIRST_PORT, reserved_ports={8420})
        self.admin = AdminApp(token=TOKEN, apis=apis, health=healthy)
        self.stub = StubTreq(self.admin.resource())

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             token: str | None = TOKEN, headers: dict[str, str] | None = None
             ) -> tuple[int, Any, Any]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        d = self.stub.request(method, BASE + path, headers=h, data=data)
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        self.assertNotIn(b"Traceback", content)
        if response.code != 204:
            self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                             [b"application/json"], content)
        return response.code, json.loads(content) if content else None, response.headers

    def create(self, name: str = "chat", **fields: Any) -> dict[str, Any]:
        status, body, _ = self.call("POST", "/api/apis", {"name": name, "model": "llama3.2",
                                                          **fields})
        self.assertEqual(status, 201, body)
        return body

    def assert_error(self, result: tuple[int, Any, Any], status: int, code: str,
                     field: str | None = None) -> None:
        got_status, body, _ = result
        self.assertEqual((got_status, set(body)), (status, {"error"}), body)
        self.assertEqual(set(body["error"]), {"code", "message"})
        self.assertEqual(body["error"]["code"], code, body)
        self.assertTrue(body["error"]["message"])
        if field is not None:
            self.assertTrue(body["error"]["message"].startswith(f"{field}:"), body)


class AuthTests(AdminTestCase):
    ROUTES = [("GET", "/api/apis"), ("POST", "/api/apis"), ("GET", "/api/apis/1"),
              ("GET", "/api/apis/nope"), ("PATCH", "/api/apis/1"), ("DELETE", "/api/apis/1"),
              ("POST", "/api/apis/1/start"), ("POST", "/api/apis/1/stop"),
              ("POST", "/api/apis/1/rotate-key")]

    def test_every_route_needs_the_token(self) -> None:
        api = self.create()
        for token in (None, "", "wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()):
            for method, path in self.ROUTES:
                result = self.call(method, path, {"name": "x"}, token=token)
                self.assert_error(result, 401, "unauthorized")
                self.assertEqual(result[2].getRawHeaders(b"www-authenticate"), [b"Bearer"])
        # the same body whatever was wrong
        bodies = {json.dumps(self.call("GET", "/api/apis", token=t)[1]) for t in (None, "x")}
        self.assertEqual(len(bodies), 1)
        # nothing changed
        self.assertEqual(self.call("GET", f"/api/apis/{api['id']}")[1]["status"], "running")

    def test_other_schemes_are_refused(self) -> None:
        for value in (f"Basic {TOKEN}", TOKEN, f"Token {TOKEN}", "Bearer"):
            result = self.call("GET", "/api/apis", token=None, headers={"Authorization": value})
            self.assert_error(result, 401, "unauthorized")

    def test_auth_comes_before_body_parsing(self) -> None:
        self.assert_error(self.call("POST", "/api/apis", raw=b"{", token=None), 401,
                          "unauthorized")

    def test_health_needs_no_token(self) -> None:
        status, body, _ = self.call("GET", "/health", token=None)
        self.assertEqual((status, body), (200, {"status": "ok"}))


class CreateTests(AdminTestCase):
    def test_create_returns_the_key_and_every_field(self) -> None:
        status, body, _ = self.call("POST", "/api/apis", {"name": "chat", "model": "llama3.2"})
        self.assertEqual(status, 201)
        self.assertLessEqual(CONTRACT_FIELDS | {"key"}, set(body))
        self.assertNotIn("key_hash", body)
        self.assertTrue(body["key"].startswith("flm-"))
        self.assertTrue(body["key"].startswith(body["key_prefix"]))
        self.assertLess(len(body["key_prefix"]), len(body["key"]))
        self.assertEqual((body["name"], body["model"], body["status"]),
                         ("chat", "llama3.2", "running"))
        self.assertTrue(ISO_UTC.match(body["created_at"]), body["created_at"])
        self.assertTrue(ISO_UTC.match(body["updated_at"]))
        self.assertIsNone(body["last_used_at"])
        self.assertIn(body["port"], self.reactor.listening())
        # the key works against the cache of the running API, and is shown only now
        config = self.registry.cache.by_port(body["port"])
        self.assertTrue(keys.matches(body["key"].encode(), config.key_hash))
        shown = self.call("GET", f"/api/apis/{body['id']}")[1]
        self.assertNotIn("key", shown)
        self.assertEqual(shown, {k: v for k, v in body.items() if k != "key"})

    def test_defaults(self) -> None:
        body = self.create()
        self.assertEqual({k: body[k] for k in ("max_concurrent", "max_queue", "queue_timeout_s",
                                               "upstream_timeout_s", "rate_limit_rpm",
                                               "priority", "allow_unknown_model")},
                         {"max_concurrent": 1, "max_queue": 32, "queue_timeout_s": 60,
                          "upstream_timeout_s": 300, "rate_limit_rpm": None, "priority": 0,
                          "allow_unknown_model": False})
        self.assertGreaterEqual(body["port"], FIRST_PORT)
        self.assertGreater(self.create("other")["port"], body["port"])

    def test_every_field_given(self) -> None:
        port = free_port()
        body = self.create(port=port, max_concurrent=4, max_queue=0,
                           queue_timeout_s=1.5, upstream_timeout_s=30, rate_limit_rpm=120,
                           priority=-3, allow_unknown_model=True, model="not-pulled",
                           start=False, host="127.0.0.1")
        self.assertEqual((body["port"], body["max_concurrent"], body["max_queue"],
                          body["queue_timeout_s"], body["upstream_timeout_s"],
                          body["rate_limit_rpm"], body["priority"], body["allow_unknown_model"],
                          body["model"], body["status"]),
                         (port, 4, 0, 1.5, 30, 120, -3, True, "not-pulled",
                          "stopped"))
        self.assertEqual(self.reactor.listening(), [])

    def test_unknown_model(self) -> None:
        self.assert_error(self.call("POST", "/api/apis", {"name": "a", "model": "nope"}),
                          422, "invalid_field", "model")

    def test_unknown_model_taken_as_given_when_the_backend_is_down(self) -> None:
        self.models.reachable = False
        self.assertEqual(self.create(model="nope")["model"], "nope")

    def test_duplicate_name(self) -> None:
        self.create()
        self.assert_error(self.call("POST", "/api/apis", {"name": "chat", "model": "llama3.2"}),
                          409, "name_taken", "name")

    def test_port_of_another_api(self) -> None:
        port = self.create(start=False)["port"]
        self.assert_error(self.call("POST", "/api/apis",
                                    {"name": "b", "model": "llama3.2", "port": port}),
                          409, "port_taken", "port")

    def test_port_in_use_by_another_program(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            self.assert_error(self.call("POST", "/api/apis",
                                        {"name": "b", "model": "llama3.2", "port": port}),
                              409, "port_taken", "port")

    def test_the_admin_port_is_never_given_out(self) -> None:
        self.assert_error(self.call("POST", "/api/apis",
                                    {"name": "b", "model": "llama3.2", "port": 8420}),
                          409, "port_taken", "port")

    def test_busy_port_at_start_sets_error(self) -> None:
        port = free_port()
        self.reactor.busy_ports.add(port)
        body = self.create(port=port)
        self.assertEqual(body["status"], "error")
        self.assertIn("cannot listen", body["status_reason"])
        self.assert_error(self.call("POST", f"/api/apis/{body['id']}/start"), 409, "port_taken")
        self.reactor.busy_ports.clear()
        status, started, _ = self.call("POST", f"/api/apis/{body['id']}/start")
        self.assertEqual((status, started["status"], started["status_reason"]),
                         (200, "running", None))

    BAD_FIELDS: list[tuple[str, Any]] = [
        ("name", ""), ("name", 5), ("name", None), ("name", "1abc"), ("name", "a" * 65),
        ("name", "has space"), ("name", "a/b"), ("name", ["a"]), ("name", "\u00e9t\u00e9"),
        ("model", ""), ("model", 5), ("model", "a\nb"), ("model", "x" * 201),
        ("model", {"a": 1}),
        ("port", 0), ("port", 65536), ("port", -1), ("port", "8080"), ("port", 8080.5),
        ("port", True), ("port", None),
        ("max_concurrent", 0), ("max_concurrent", 1025), ("max_concurrent", "1"),
        ("max_concurrent", 1.5), ("max_concurrent", False),
        ("max_queue", -1), ("max_queue", 100_001), ("max_queue", 2.0),
        ("queue_timeout_s", 0), ("queue_timeout_s", -1), ("queue_timeout_s", "5"),
        ("queue_timeout_s", True), ("queue_timeout_s", 86_401), ("queue_timeout_s", None),
        ("upstream_timeout_s", 0), ("upstream_timeout_s", [300]),
        ("rate_limit_rpm", 0), ("rate_limit_rpm", "60"), ("rate_limit_rpm", 1.5),
        ("rate_limit_rpm", -5), ("rate_limit_rpm", 10**30),
        ("priority", 101), ("priority", -101), ("priority", "1"), ("priority", None),
        ("allow_unknown_model", "yes"), ("allow_unknown_model", 1),
        ("allow_unknown_model", None),
        ("start", "no"), ("start", 0),
        ("host", "localhost"), ("host", 5), ("host", "999.1.1.1"), ("host", ""),
    ]

    def test_each_bad_field_is_named(self) -> None:
        for field, value in self.BAD_FIELDS:
            payload = {"name": "ok", "model": "llama3.2", field: value}
            with self.subTest(field=field, value=value):
                self.assert_error(self.call("POST", "/api/apis", payload), 422,
                                  "invalid_field", field)
        self.assertEqual(self.call("GET", "/api/apis")[1]["total"], 0)

    def test_required_fields(self) -> None:
        self.assert_error(self.call("POST", "/api/apis", {"model": "llama3.2"}), 422,
                          "invalid_field", "name")
        self.assert_error(self.call("POST", "/api/apis", {"name": "a"}), 422,
                          "invalid_field", "model")

    def test_unknown_fields_are_named(self) -> None:
        for field in ("nmae", "key", "key_hash", "status", "created_at", "x" * 10):
            with self.subTest(field=field):
                self.assert_error(self.call("POST", "/api/apis",
                                            {"name": "a", "model": "llama3.2", field: 1}),
                                  422, "unknown_field", field)
        self.assert_error(self.call("POST", "/api/apis",
                                    {"name": "a", "model": "llama3.2", "id": 7}),
                          422, "invalid_field", "id")

    def test_lone_surrogate_in_a_field_is_refused_not_a_crash(self) -> None:
        raw = b'{"name": "ok", "model": "m\\ud800", "allow_unknown_model": true}'
        status, body, _ = self.call("POST", "/api/apis", raw=raw)
        self.assertIn(status, (400, 422), body)
        self.assertEqual(self.call("GET", "/api/apis")[1]["total"], 0)

    MALFORMED = [
        b"", b"{", b"{'name': 'a'}", b'{"name": "a",}', b'{"name": "a"} x',
        b'{"name": "a", "model": "m", "max_queue": NaN}',
        b'{"name": "a", "model": "m", "priority": Infinity}',
        b'{"name": "a", "model": "m", "priority": -Infinity}',
        b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"name": "a", "model": "m", "priority": ' + b"9" * 5000 + b"}",
        b'{"name": "\xff\xfe", "model": "m"}', b"\xef\xbb\xbf\xff",
    ]

    def test_malformed_json_is_400(self) -> None:
        for raw in self.MALFORMED:
            with self.subTest(raw=raw[:40]):
                self.assert_error(self.call("POST", "/api/apis", raw=raw), 400, "invalid_json")

    def test_a_body_that_is_not_an_object(self) -> None:
        for raw in (b"[]", b"1", b'"x"', b"null", b"true"):
            with self.subTest(raw=raw):
                status, body, _ = self.call("POST", "/api/apis", raw=raw)
                self.assertIn(status, (400, 422), body)
                self.assertEqual(set(body["error"]), {"code", "message"})

    @settings(derandomize=True, deadline=None, max_examples=150,
              suppress_health_check=[HealthCheck.too_slow])
    @given(payload=st.dictionaries(
        st.sampled_from(["name", "model", "port", "max_concurrent", "max_queue",
                         "queue_timeout_s", "upstream_timeout_s", "rate_limit_rpm", "priority",
                         "allow_unknown_model", "start", "host", "id", "other"]),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=5)))
    def test_never_a_500(self, payload: dict[str, Any]) -> None:
        status, body, _ = self.call("POST", "/api/apis", payload)
        self.assertIn(status, (201, 400, 409, 422), body)
        if status == 201:
            self.call("DELETE", f"/api/apis/{body['id']}")


class ListTests(AdminTestCase):
    def test_pagination(self) -> None:
        ids = [self.create(f"api{n}", start=n % 2 == 0)["id"] for n in range(5)]
        status, page, _ = self.call("GET", "/api/apis?limit=2")
        self.assertEqual(status, 200)
        self.assertEqual(set(page), {"items", "next_cursor", "total"})
        self.assertEqual(([a["id"] for a in page["items"]], page["total"]), (ids[:2], 5))
        self.assertIsInstance(page["next_cursor"], str)
        seen = [a["id"] for a in page["items"]]
        while page["next_cursor"]:
            page = self.call("GET", f"/api/apis?limit=2&cursor={page['next_cursor']}")[1]
            self.assertEqual(page["total"], 5)
            seen += [a["id"] for a in page["items"]]
        self.assertEqual(seen, ids)
        self.assertFalse(any("key" in item or "key_hash" in item for item in page["items"]))

    def test_exact_fit_has_no_next_page(self) -> None:
        for n in range(4):
            self.create(f"api{n}", start=False)
        page = self.call("GET", "/api/apis?limit=4")[1]
        self.assertEqual((len(page["items"]), page["next_cursor"]), (4, None))

    def test_default_limit_is_50(self) -> None:
        for n in range(51):
            self.create(f"api{n}", start=False)
        page = self.call("GET", "/api/apis")[1]
        self.assertEqual((len(page["items"]), page["total"]), (50, 51))
        self.assertIsNotNone(page["next_cursor"])
        self.assertEqual(len(self.call("GET", "/api/apis?limit=500")[1]["items"]), 51)

    def test_status_filter(self) -> None:
        for n in range(5):
            self.create(f"api{n}", start=n % 2 == 0)
        page = self.call("GET", "/api/apis?status=running&limit=2")[1]
        self.assertEqual([a["name"] for a in page["items"]], ["api0", "api2"])
        self.assertEqual(page["total"], 3)
        page = self.call("GET", f"/api/apis?status=running&limit=2&cursor={page['next_cursor']}")[1]
        self.assertEqual(([a["name"] for a in page["items"]], page["next_cursor"]),
                         (["api4"], None))
        page = self.call("GET", "/api/apis?status=stopped")[1]
        self.assertEqual(([a["name"] for a in page["items"]], page["total"]),
                         (["api1", "api3"], 2))
        self.assertEqual(self.call("GET", "/api/apis?status=error")[1],
                         {"items": [], "next_cursor": None, "total": 0})

    def test_bad_query_arguments(self) -> None:
        cases = [("limit=0", "limit"), ("limit=501", "limit"), ("limit=abc", "limit"),
                 ("limit=-1", "limit"), ("limit=1.5", "limit"), ("limit=%C2%B2", "limit"),
                 ("limit=" + "9" * 5000, "limit"),
                 ("cursor=garbage!", "cursor"), ("cursor=YQ", "cursor"),
                 ("cursor=eDE", "cursor"), ("cursor=%FF%FE", "cursor"),
                 ("cursor=" + encode_cursor(10**30), "cursor"),
                 ("cursor=" + encode_cursor(2**63), "cursor"),
                 ("cursor=" + "YTk5" * 2000, "cursor"),
                 ("status=bogus", "status"), ("status=RUNNING", "status")]
        for query, field in cases:
            with self.subTest(query=query[:50]):
                self.assert_error(self.call("GET", "/api/apis?" + query), 422,
                                  "invalid_field", field)


class ShowUpdateTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.api = self.create()

    def test_show_by_id_and_name(self) -> None:
        by_id = self.call("GET", f"/api/apis/{self.api['id']}")
        by_name = self.call("GET", "/api/apis/chat")
        self.assertEqual(by_id[0], 200)
        self.assertEqual(by_id[1], by_name[1])
        self.assertEqual(by_id[1]["name"], "chat")

    def test_show_unknown(self) -> None:
        for ref in ("9999", "nope", "%E2%80%AE", "99999999999999999999999", "-1", "0"):
            with self.subTest(ref=ref):
                self.assert_error(self.call("GET", f"/api/apis/{ref}"), 404, "not_found")

    def test_patch_limits_reach_the_running_api_at_once(self) -> None:
        status, body, _ = self.call("PATCH", "/api/apis/chat",
                                    {"max_concurrent": 3, "max_queue": 7, "rate_limit_rpm": 60,
                                     "priority": 2, "queue_timeout_s": 5})
        self.assertEqual(status, 200, body)
        self.assertEqual((body["max_concurrent"], body["max_queue"], body["rate_limit_rpm"],
                          body["priority"], body["queue_timeout_s"]), (3, 7, 60, 2, 5))
        runtime = self.registry.runtimes[self.api["id"]]
        self.assertEqual((runtime.gate.limit, runtime.gate.max_queue), (3, 7))
        self.assertEqual(runtime.bucket.rpm, 60)
        config = self.registry.cache.by_port(self.api["port"])
        self.assertEqual((config.max_concurrent, config.priority), (3, 2))
        self.assertGreaterEqual(body["updated_at"], self.api["updated_at"])
        # one listener: no restart
        self.assertEqual(self.reactor.listening(), [self.api["port"]])

    def test_patch_model(self) -> None:
        body = self.call("PATCH", "/api/apis/chat", {"model": "qwen2.5:0.5b"})[1]
        self.assertEqual(body["model"], "qwen2.5:0.5b")
        self.assertEqual(self.registry.cache.by_port(self.api["port"]).model, "qwen2.5:0.5b")
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"model": "unknown"}),
                          422, "invalid_field", "model")
        self.assertEqual(self.call("GET", "/api/apis/chat")[1]["model"], "qwen2.5:0.5b")

    def test_patch_nothing(self) -> None:
        status, body, _ = self.call("PATCH", "/api/apis/chat", {})
        self.assertEqual(status, 200)
        self.assertEqual(body, self.call("GET", "/api/apis/chat")[1])

    def test_patch_refusals(self) -> None:
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"id": 5}), 422,
                          "invalid_field", "id")
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"id": self.api["id"]}), 422,
                          "invalid_field", "id")
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"key": "flm-x"}), 422,
                          "unknown_field", "key")
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"max_queue": "7"}), 422,
                          "invalid_field", "max_queue")
        self.assert_error(self.call("PATCH", "/api/apis/chat", {"status": "error"}), 422,
                          "invalid_field", "status")
        self.assert_error(self.call("PATCH", "/api/apis/chat", raw=b"{nope"), 400,
                          "invalid_json")
        self.assert_error(self.call("PATCH", "/api/apis/nope", {"priority": 1}), 404,
                          "not_found")
        other = self.create("other", start=False)
        self.assert_error(self.call("PATCH", "/api/apis/other", {"name": "chat"}), 409,
                          "name_taken", "name")
        self.assert_error(self.call("PATCH", "/api/apis/other", {"port": self.api["port"]}),
                          409, "port_taken", "port")
        other.pop("key")
        self.assertEqual(self.call("GET", "/api/apis/other")[1], other)
        self.assertEqual(self.call("GET", "/api/apis/chat")[1]["max_queue"], 32)

    def test_patch_status(self) -> None:
        self.assertEqual(self.call("PATCH", "/api/apis/chat", {"status": "stopped"})[1]["status"],
                         "stopped")
        self.assertIsNone(self.registry.cache.by_port(self.api["port"]))
        self.assertEqual(self.call("PATCH", "/api/apis/chat", {"status": "running"})[1]["status"],
                         "running")
        self.assertIsNotNone(self.registry.cache.by_port(self.api["port"]))

    def test_rotate_key(self) -> None:
        old = self.api["key"].encode()
        status, body, _ = self.call("POST", "/api/apis/chat/rotate-key")
        self.assertEqual(status, 200)
        new = body["key"].encode()
        self.assertNotEqual(new, old)
        self.assertTrue(body["key"].startswith(body["key_prefix"]))
        config = self.registry.cache.by_port(self.api["port"])
        self.assertFalse(keys.matches(old, config.key_hash))
        self.assertTrue(keys.matches(new, config.key_hash))
        self.assertIsNone(self.registry.cache.by_key_hash(keys.hash_key(old)))
        self.assertNotIn("key", self.call("GET", "/api/apis/chat")[1])

    def test_rotate_key_of_a_stopped_api(self) -> None:
        self.call("POST", "/api/apis/chat/stop")
        body = self.call("POST", "/api/apis/chat/rotate-key")[1]
        self.call("POST", "/api/apis/chat/start")
        config = self.registry.cache.by_port(self.api["port"])
        self.assertTrue(keys.matches(body["key"].encode(), config.key_hash))
        self.assertFalse(keys.matches(self.api["key"].encode(), config.key_hash))

    def test_start_stop_idempotent(self) -> None:
        for _ in range(2):
            status, body, _ = self.call("POST", "/api/apis/chat/stop")
            self.assertEqual((status, body["status"]), (200, "stopped"))
            self.assertNotIn(self.api["id"], self.registry.runtimes)
        for _ in range(2):
            status, body, _ = self.call("POST", f"/api/apis/{self.api['id']}/start")
            self.assertEqual((status, body["status"]), (200, "running"))
        self.assertEqual(self.reactor.listening(), [self.api["port"]] * 2)  # one per start
        self.assert_error(self.call("POST", "/api/apis/nope/start"), 404, "not_found")
        self.assert_error(self.call("POST", "/api/apis/nope/stop"), 404, "not_found")
        self.assert_error(self.call("POST", "/api/apis/nope/rotate-key"), 404, "not_found")

    def test_delete(self) -> None:
        self.successResultOf(self.store.insert_logs(
            [(self.api["id"], 1.0, "POST", "/v1/chat/completions", 200, 0, 0, 0, 0, 1, 1, "m",
              1, 1, "r", None, None, None)], {}))
        status, body, _ = self.call("DELETE", "/api/apis/chat")
        self.assertEqual((status, body), (204, None))
        self.assertNotIn(self.api["id"], self.registry.runtimes)
        self.assertIsNone(self.registry.cache.by_port(self.api["port"]))
        self.assert_error(self.call("GET", "/api/apis/chat"), 404, "not_found")
        self.assert_error(self.call("GET", f"/api/apis/{self.api['id']}"), 404, "not_found")
        self.assert_error(self.call("DELETE", "/api/apis/chat"), 404, "not_found")

        def count(c: Any) -> int:
            c.execute("SELECT count(*) FROM request_logs")
            return c.fetchone()[0]
        self.assertEqual(self.successResultOf(self.store.run_read("count", count)), 0)
        # the name and port can be used again
        self.create(port=self.api["port"])

    def test_unknown_paths_and_methods(self) -> None:
        status, body, _ = self.call("GET", "/api/nothing-here")
        self.assertEqual(status, 404)
        self.assertEqual(set(body["error"]), {"code", "message"})
        status, body, _ = self.call("PUT", "/api/apis/chat", {"name": "x"})
        self.assertEqual(status, 405)
        self.assertEqual(body["error"]["code"], "method_not_allowed")
        status, body, _ = self.call("GET", "/api/apis/chat/start")
        self.assertEqual(status, 405)


class ActionBodyTests(AdminTestCase):
    """Start, stop and delete take no fields: no body or ``{}``; anything else is refused
    before anything happens (the newcomer's ``POST .../stop`` with ``garbage`` stopped it)."""

    def test_a_body_that_is_not_json_is_a_400_and_changes_nothing(self) -> None:
        api = self.create()
        for action in ("stop", "start"):
            self.assert_error(self.call("POST", f"/api/apis/chat/{action}", raw=b"garbage"),
                              400, "invalid_json")
        self.assert_error(self.call("DELETE", "/api/apis/chat", raw=b"garbage"), 400,
                          "invalid_json")
        self.assertEqual(self.call("GET", "/api/apis/chat")[1]["status"], api["status"])

    def test_a_field_is_unknown(self) -> None:
        self.create()
        self.assert_error(self.call("POST", "/api/apis/chat/stop", {"force": True}), 422,
                          "unknown_field", "force")

    def test_no_body_or_an_empty_object_works(self) -> None:
        self.create()
        self.assertEqual(self.call("POST", "/api/apis/chat/stop")[0], 200)
        self.assertEqual(self.call("POST", "/api/apis/chat/start", {})[0], 200)

    def test_health_answers_get_and_head_only(self) -> None:
        status, _, headers = self.call("DELETE", "/health", token=None)
        self.assertEqual(status, 405)
        self.assertIn(b"GET", headers.getRawHeaders(b"allow")[0])
