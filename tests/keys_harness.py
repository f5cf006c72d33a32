"""A running API with its keys, socket-free: the admin app (``StubTreq``), a real store
(inline adbapi), the registry, and the API's own ``ApiSite`` fed raw HTTP bytes; the model
server is ``ScriptedBackend`` (reached through FLM's real ``Agent``); time is the reactor's clock."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from flm.admin.apis import Apis
from flm.admin.app import AdminApp
from flm.admin.observe import Observe
from flm.backends.ollama import OLLAMA_PATHS
from flm.gateway.admission import BackendGate
from flm.gateway.keys import month_span
from flm.gateway.registry import Registry
from flm.gateway.resource import Upstream
from flm.observe.budgets import BudgetCharges, budgeted_keys
from flm.observe.usage import UsageFlush
from tests.test_admin_apis import BASE, TOKEN, FakeModels, InlineReactor, healthy, inline_store
from tests.fakes.scripted import ScriptedBackend
from tests.test_proxy import CHAT, Response, http

# 2026-03-15T12:00:00Z: mid-day, mid-month
T0 = 1773576000.0
DAY = 86400


def usage_json(prompt: int, completion: int) -> bytes:
    return json.dumps({"choices": [{"message": {"content": "hi"}}],
                       "usage": {"prompt_tokens": prompt, "completion_tokens": completion}
                       }).encode()


def usage_stream(prompt: int, completion: int) -> list[bytes]:
    return [b'data: {"choices":[{"delta":{"content":"h"}}]}\n\n',
            b'data: {"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}\n\n'
            % (prompt, completion), b"data: [DONE]\n\n"]


class KeysHarness:
    """One store file; ``restart()`` opens it again with a new registry, as a restart does."""

    def __init__(self, case: SynchronousTestCase, t0: float = T0,
                 directory: Path | None = None) -> None:
        self.case = case
        self.reactor = InlineReactor()
        self.reactor.advance(t0)
        if directory is None:  # else another harness's: a second node on its store file
            directory = Path(tempfile.mkdtemp(prefix="flm-test-keys-"))
            case.addCleanup(shutil.rmtree, directory, True)
        self.dir = directory
        self.backend = ScriptedBackend(self.reactor)
        self.rows: list[tuple[Any, ...]] = []
        self.peer = 0
        self._open()

    def _open(self) -> None:
        self.store = inline_store(self.dir / "flm.sqlite3", self.reactor)
        upstream = Upstream(agent=self.backend.agent, base_url=b"http://backend:11434",
                            paths=OLLAMA_PATHS, gate=BackendGate(8, self.reactor),
                            clock=self.reactor, record=self.rows.append)
        self.registry = Registry(self.store, upstream, reactor=self.reactor, cache_size=100,
                                 grace_period=0.0,
                                 site_limits={"max_body": 65536, "idle_timeout": 600.0})
        self.apis = Apis(self.store, self.registry, FakeModels(), api_host="127.0.0.1",
                         first_port=47400, reserved_ports=set())
        observe = Observe(self.store, metrics=None, monitor=None, registry=self.registry,
                          logbuffer=None, clock=self.reactor)
        self.admin = AdminApp(token=TOKEN, apis=self.apis, health=healthy, observe=observe)
        self.stub = StubTreq(self.admin.resource())
        self.usage = UsageFlush(self.store, self.registry.keys, self.reactor)
        self.budgets = BudgetCharges(self.store, self.registry.keys, self.reactor, month_span,
                                     lambda: budgeted_keys(self.registry.runtimes))
        self.registry.startService()  # restores running APIs and loads key usage

    def close(self) -> None:
        self.flush()
        self.registry.runtimes.clear()
        self.store.stopService()

    def restart(self) -> None:
        self.close()
        self._open()

    def flush(self) -> None:
        """What the usage loop and the log buffer do every second."""
        self.case.successResultOf(self.usage.tick())
        self.case.successResultOf(self.budgets.tick())
        if self.rows:
            self.case.successResultOf(self.store.insert_logs(self.rows, {}))
            self.rows.clear()

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    # the admin API

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        d = self.stub.request(method, BASE + path, data=data,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        self.stub.flush()
        response = self.case.successResultOf(d)
        content = self.case.successResultOf(response.content())
        return response.code, json.loads(content) if content else None

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, payload = self.call(method, path, body)
        self.case.assertEqual(got, status, payload)
        return payload

    def create_api(self, name: str = "chat", **fields: Any) -> dict[str, Any]:
        return self.ok("POST", "/api/apis", {"name": name, "model": "llama3.2", **fields},
                       status=201)

    # the API port

    def send(self, api: dict[str, Any], key: str | None, path: str = "/v1/chat/completions",
             body: bytes = CHAT, answer: bytes | list[bytes] | None = None,
             stream: bool = False) -> Response:
        """One request on a new connection; the fake backend answers with ``answer``
        (a body, or SSE chunks when ``stream``) if the request reaches it."""
        self.peer += 1
        peer = IPv4Address("TCP", f"10.{self.peer // 65536 % 256}.{self.peer // 256 % 256}."
                                  f"{self.peer % 256}", 40000)
        site = self.registry.runtimes[api["id"]].site
        protocol = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer,
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", api["port"]))
        protocol.makeConnection(transport)
        calls = len(self.backend.calls)
        protocol.dataReceived(http("POST", path, body, key=key))
        if len(self.backend.calls) > calls:
            call = self.backend.calls[-1]
            if stream:
                call.respond(200, answer if answer is not None else usage_stream(1, 1),
                             headers={b"content-type": b"text/event-stream"})
            else:
                call.respond(200, answer if answer is not None else usage_json(1, 1))
        self.backend.flush()
        response = Response(transport.value())
        protocol.connectionLost(None)
        return response

    def reached_backend(self) -> int:
        return len(self.backend.calls)
