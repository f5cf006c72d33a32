"""``/api/models`` through the admin app (one Klein app, a subroute) over ``StubTreq``."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flm.admin.app import AdminApp
from flm.admin.models import ModelsAdmin
from flm.backends import make_backend
from flm.backends.catalog import ModelCache
from flm.backends.pulls import PullJobs

DIGEST = "sha256:6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa"
PULL = [
    {"status": "pulling manifest"},
    {"status": "pulling 6a0746a1ec1a", "digest": DIGEST, "total": 1000, "completed": 250},
    {"status": "pulling 6a0746a1ec1a", "digest": DIGEST, "total": 1000, "completed": 1000},
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    {"status": "success"},
]


TOKEN = "admin-token"


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class FakeOllama(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.names = ["llama3.2:latest", "hf.co/user/repo:Q4_K_M"]
        self.pulls: list[Any] = []
        self.deleted: list[str] = []
        self.down = False
        self.hold_deletes = False
        self.held: list[Any] = []

    def render(self, request: Any) -> Any:
        raw = request.content.read()
        body = json.loads(raw) if raw else {}
        if self.down:
            request.transport.abortConnection()
            return NOT_DONE_YET
        if request.path == b"/api/tags":
            return json.dumps({"models": [{"name": n, "size": 1} for n in self.names]}).encode()
        if request.path == b"/api/pull":
            self.pulls.append(request)
            return NOT_DONE_YET
        if body.get("model") not in self.names:
            request.setResponseCode(404)
            return json.dumps({"error": f"model '{body.get('model')}' not found"}).encode()
        if request.path == b"/api/delete" and self.hold_deletes:
            lost: list[Any] = []
            request.notifyFinish().addErrback(lost.append)
            self.held.append((request, body["model"], lost))
            return NOT_DONE_YET
        if request.path == b"/api/delete":
            self.names.remove(body["model"])
            self.deleted.append(body["model"])
            return b""
        return json.dumps({"details": {"family": "llama"}}).encode()  # /api/show


class Events(Protocol):
    """Collects an SSE body as it arrives."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.ended = reason

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(chunk[len(b"data: "):]) for chunk in self.data.split(b"\n\n")
                if chunk.startswith(b"data: ")]


class AdminCase(SynchronousTestCase):
    """An admin sub-app in front of a fake backend, both over ``StubTreq``."""

    kind, url = "ollama", "http://ollama:11434"

    def upstream_resource(self) -> Any:
        self.fake = FakeOllama()
        return self.fake

    def setUp(self) -> None:
        self.upstream = StubTreq(self.upstream_resource())
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.backend = make_backend(self.kind, self.url, self.upstream, self.clock)
        self.cache = ModelCache(self.backend, self.clock)
        self.pulls = PullJobs(self.backend, self.clock, on_change=lambda job: self.cache.expire())
        self.pulls.startService()
        self.busy: set[str] = set()
        self.admin = ModelsAdmin(self.cache, self.pulls, self.backend, self.busy.__contains__,
                                 clock=self.clock)
        self.client = StubTreq(self.resource())
        self.base = "http://admin/api/models/"

    def resource(self) -> Any:
        return AdminApp(token=TOKEN, apis=None, health=None,  # type: ignore[arg-type]
                        models=self.admin).resource()

    def flush(self) -> None:
        for _ in range(4):
            self.upstream.flush()
            self.client.flush()

    def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
        kw.setdefault("headers", {"Authorization": f"Bearer {TOKEN}"})
        d = self.client.request(method, self.base + path, **kw)
        self.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.client.content(response))
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
        return response.code, ctype, json.loads(body) if b"json" in ctype else body


class AdminTests(AdminCase):
    def test_list(self) -> None:
        code, ctype, body = self.call("GET", "")
        assert code == 200 and ctype == b"application/json"
        assert [m["name"] for m in body["models"]] == self.fake.names
        assert body["fetched_at"] == "2023-11-14T22:13:20.000Z" and body["stale"] is False

    def test_list_stale_and_unavailable(self) -> None:
        self.fake.down = True
        code, _, body = self.call("GET", "")
        assert code == 502 and body["error"]["code"] == "backend_unavailable"
        self.fake.down = False
        self.call("GET", "")
        self.fake.down = True
        code, _, body = self.call("POST", "refresh")
        assert code == 200 and body["stale"] is True and body["models"]

    def test_refresh_fetches_again(self) -> None:
        self.call("GET", "")
        self.fake.names.append("qwen2.5:0.5b")
        assert len(self.call("GET", "")[2]["models"]) == 2
        assert len(self.call("POST", "refresh")[2]["models"]) == 3

    def test_pull_validation(self) -> None:
        # The admin API's one JSON parser and one code for an unknown field.
        for body, code, word, error_code in [
                (b"{", 400, "JSON", "invalid_json"), (b"[]", 422, "object", "invalid_body"),
                (b'{"name": NaN}', 400, "JSON", "invalid_json"),
                (b"{}", 422, "name", "invalid_field"), (b'{"name": 5}', 422, "name", None),
                (b'{"name": "a b"}', 422, "name", None),
                (b'{"name": "x", "insecure": true}', 422, "insecure", "unknown_field")]:
            got, _, err = self.call("POST", "pull", data=body)
            assert got == code, body
            assert word in err["error"]["message"], body
            assert error_code in (None, err["error"]["code"]), err
        assert self.fake.pulls == []

    def test_pull_and_watch(self) -> None:
        code, _, started = self.call("POST", "pull", json={"name": "qwen2.5:0.5b"})
        assert code == 202 and started["status"] == "running"
        job = started["job"]
        assert self.call("POST", "pull", json={"name": "qwen2.5:0.5b"})[2]["job"] == job
        self.fake.pulls[0].write(ndjson(*PULL[:2]))
        self.flush()
        # A late watcher first gets the current state.
        d = self.client.get(self.base + f"pulls/{job}/events", unbuffered=True,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        self.flush()
        response = self.successResultOf(d)
        assert response.headers.getRawHeaders(b"content-type") == [
            b"text/event-stream; charset=utf-8"]
        events = Events()
        response.deliverBody(events)
        self.flush()
        assert events.states()[0]["percent"] == 25.0
        self.clock.advance(15)
        self.flush()
        assert b": ping\n\n" in events.data
        self.fake.pulls[0].write(ndjson(*PULL[2:]))
        self.fake.pulls[0].finish()
        self.flush()
        states = events.states()
        assert states[-1]["status"] == "done" and states[-1]["percent"] == 100.0
        assert [s["status"] for s in states].count("done") == 1
        assert events.ended is not None, "the stream did not end"
        code, _, state = self.call("GET", f"pulls/{job}")
        assert code == 200 and state == states[-1]
        assert len(self.fake.pulls) == 1  # one backend stream for everyone

    def test_pull_error_reaches_watchers(self) -> None:
        job = self.call("POST", "pull", json={"name": "nosuch"})[2]["job"]
        d = self.client.get(self.base + f"pulls/{job}/events", unbuffered=True,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        self.flush()
        events = Events()
        self.successResultOf(d).deliverBody(events)
        self.fake.pulls[0].write(ndjson(PULL[0], {"error": "pull model manifest: file does not exist"}))
        self.flush()
        final = events.states()[-1]
        assert final["status"] == "error"
        assert final["error"] == "pull model manifest: file does not exist"
        assert events.ended is not None

    def test_watcher_disconnect_unsubscribes(self) -> None:
        job = self.call("POST", "pull", json={"name": "qwen2.5"})[2]["job"]
        d = self.client.get(self.base + f"pulls/{job}/events", unbuffered=True,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        self.flush()
        events = Events()
        self.successResultOf(d).deliverBody(events)
        self.flush()
        assert len(self.pulls.get(job).watchers) == 1
        events.transport.stopProducing()
        self.flush()
        assert self.pulls.get(job).watchers == []
        self.clock.advance(60)  # no heartbeat into a closed request
        self.fake.pulls[0].write(ndjson(*PULL))
        self.fake.pulls[0].finish()
        self.flush()
        assert self.call("GET", f"pulls/{job}")[2]["status"] == "done"

    def test_unknown_job(self) -> None:
        code, _, body = self.call("GET", "pulls/nope")
        assert code == 404 and body["error"]["code"] == "not_found"
        assert self.call("GET", "pulls/nope/events")[0] == 404

    def test_delete(self) -> None:
        self.call("GET", "")
        code, _, body = self.call("DELETE", "hf.co%2Fuser%2Frepo%3AQ4_K_M")
        assert code == 204 and body == b""
        assert self.fake.deleted == ["hf.co/user/repo:Q4_K_M"]
        assert [m["name"] for m in self.call("GET", "")[2]["models"]] == ["llama3.2:latest"]
        code, _, body = self.call("DELETE", "hf.co%2Fuser%2Frepo%3AQ4_K_M")
        assert code == 404 and body["error"]["code"] == "not_found"
        assert self.call("DELETE", "..%2Fetc")[0] == 404

    def test_a_delete_whose_client_hangs_up_still_deletes_and_expires_the_cache(self) -> None:
        self.call("GET", "")  # the cache holds both models
        self.fake.hold_deletes = True
        d = self.client.delete(self.base + "llama3.2:latest",
                               headers={"Authorization": f"Bearer {TOKEN}"})
        self.flush()
        self.assertEqual(len(self.fake.held), 1)  # the backend is deleting
        d.cancel()  # the admin client hangs up
        self.flush()
        self.failureResultOf(d)
        request, name, lost = self.fake.held.pop()
        self.assertEqual(lost, [], "the delete at the backend was cut short")
        self.fake.names.remove(name)
        self.fake.deleted.append(name)
        request.finish()
        self.flush()
        self.assertEqual(self.fake.deleted, ["llama3.2:latest"])
        # the delete went on to its end: the cached list no longer has the model
        self.assertEqual([m["name"] for m in self.call("GET", "")[2]["models"]],
                         ["hf.co/user/repo:Q4_K_M"])

    def test_delete_in_use(self) -> None:
        self.busy.add("llama3.2:latest")
        code, _, body = self.call("DELETE", "llama3.2:latest")
        assert code == 409 and body["error"]["code"] == "model_in_use"
        assert self.fake.deleted == []
        assert self.call("DELETE", "llama3.2:latest?force=true")[0] == 204

    def test_show_and_unknown_paths(self) -> None:
        code, _, body = self.call("GET", "llama3.2:latest")
        assert code == 200 and body["details"]["family"] == "llama"
        code, _, body = self.call("PUT", "pull")
        assert code == 405 and body["error"]["code"] == "method_not_allowed"


class OpenAIAdminTests(AdminCase):
    kind, url = "openai", "http://llama:8080/v1"

    def upstream_resource(self) -> Any:
        root, v1, models = Resource(), Resource(), Resource()
        models.render_GET = lambda r: b'{"data": [{"id": "qwen2.5-0.5b"}]}'  # type: ignore
        root.putChild(b"v1", v1)
        v1.putChild(b"models", models)
        return root

    def test_list(self) -> None:
        assert self.call("GET", "")[2]["models"][0]["name"] == "qwen2.5-0.5b"

    def test_not_supported(self) -> None:
        for method, path, kw in [("POST", "pull", {"json": {"name": "x"}}),
                                 ("DELETE", "x", {}), ("GET", "x", {})]:
            code, _, body = self.call(method, path, **kw)
            assert code == 501 and body["error"]["code"] == "not_supported"
            assert body["error"]["message"].startswith("an OpenAI-compatible backend cannot ")



class MountedTests(AdminCase):
    def test_root_without_slash(self) -> None:
        d = self.client.get("http://admin/api/models", headers={"Authorization": f"Bearer {TOKEN}"})
        self.flush()
        response = self.successResultOf(d)
        assert response.code == 200
        body = json.loads(self.successResultOf(self.client.content(response)))
        assert body["stale"] is False

    def test_stop_cancels_pull_watched_over_http(self) -> None:
        job = self.call("POST", "pull", json={"name": "qwen2.5"})[2]["job"]
        d = self.client.get(self.base + f"pulls/{job}/events", unbuffered=True,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        self.flush()
        events = Events()
        self.successResultOf(d).deliverBody(events)
        stopped = self.pulls.stopService()
        self.flush()
        self.successResultOf(stopped)
        assert events.states()[-1]["status"] == "error"
        assert "stopping" in events.states()[-1]["error"]
        assert events.ended is not None
