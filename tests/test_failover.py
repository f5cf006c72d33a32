"""Failover on the real request path (``ProxyResource`` over a real ``Agent`` to a scripted
model server, on a ``task.Clock``): what is retried, where, how often, and what is not."""

from __future__ import annotations

import random

from hypothesis import given, settings
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from hypothesis import strategies as st

from flm.backends.health import BackendHealth
from flm.backends.ollama import OLLAMA_PATHS
from flm.gateway.admission import BackendGate
from flm.gateway.fleet import Fleet, Member
from tests.test_proxy import CHAT, KEY, ProxyTestCase, Response, http

OK = b'{"message": {"role": "assistant", "content": "hi"}, "done": true}'


class FailoverTests(ProxyTestCase):
    names = ("a", "b", "c")

    def setUp(self) -> None:
        super().setUp()
        self.fleet = Fleet(self.clock, random=random.Random(3))
        for name in self.names:
            self.fleet.add(Member(name, "ollama", b"http://" + name.encode(), OLLAMA_PATHS,
                                  BackendGate(4, self.clock), BackendHealth(self.clock),
                                  max_concurrent=4))
        self.upstream.fleet = self.fleet
        self.upstream._own_fleet = False

    def at(self, i: int) -> bytes:
        call = self.backend.calls[i]
        return call.uri.split(b"/")[2]

    def respond(self, i: int, status: int, body: bytes) -> None:
        self.backend.calls[i].respond(status, body)
        self.pump()

    def pump(self) -> None:
        for _ in range(5):  # a retry is sent once the answer is read: a few turns
            self.backend.flush()

    def chat(self) -> None:
        self.send(http("POST", "/api/chat", CHAT, key=KEY))

    def answer(self) -> Response:
        return Response(self.send_and_value())

    def test_retryable_statuses_go_to_another_backend(self) -> None:
        for status in (429, 502, 503, 504):
            self.backend.calls.clear()
            self.chat()
            first = self.at(0)
            self.respond(0, status, b'{"error": "busy"}')
            self.assertEqual(len(self.backend.calls), 2)
            self.assertNotEqual(self.at(1), first)
            self.respond(1, 200, OK)
            response = self.answer()
            self.assertEqual(response.status, 200)
            self.assertEqual(response.headers[b"x-flm-attempts"][0], b"2")
            self.assertEqual(response.headers[b"x-flm-backend"][0], self.at(1))
            self.assertEqual((self.row()["backend"], self.row()["attempts"]),
                             (self.at(1).decode(), 2))

    def test_other_statuses_go_back_as_they_are(self) -> None:
        for status in (400, 404, 500):
            self.backend.calls.clear()
            self.chat()
            self.respond(0, status, b'{"error": "no"}')
            self.assertEqual(len(self.backend.calls), 1)
            response = self.answer()
            self.assertEqual(response.status, status)
            self.assertEqual(response.headers[b"x-flm-attempts"][0], b"1")

    def test_no_headers_in_time_goes_elsewhere(self) -> None:
        self.patch(upstream_timeout_s=5.0)  # under queue_timeout_s (10): time to retry
        self.chat()
        self.clock.advance(5)
        self.pump()
        self.assertEqual(len(self.backend.calls), 2)
        self.assertTrue(self.backend.calls[0].cancelled)
        self.respond(1, 200, OK)
        self.assertEqual(self.answer().status, 200)

    def test_at_most_max_retries_more_never_the_same_twice_then_the_last_answer(self) -> None:
        self.upstream.max_retries = 1
        self.chat()
        self.respond(0, 503, b'{"error": "one"}')
        self.respond(1, 503, b'{"error": "two"}')
        self.assertEqual(len(self.backend.calls), 2)
        self.assertNotEqual(self.at(0), self.at(1))
        response = self.answer()
        self.assertEqual((response.status, response.headers[b"x-flm-attempts"][0]), (503, b"2"))
        self.assertIn(b"two", response.body)

    def test_no_retry_past_the_budget(self) -> None:
        self.fleet.budget.balance = 0.0
        self.fleet.budget.per_s = 0.0
        self.fleet.budget.ratio = 0.0
        self.chat()
        self.respond(0, 503, b'{"error": "busy"}')
        self.assertEqual(len(self.backend.calls), 1)
        self.assertEqual(self.answer().status, 503)
        self.assertEqual(self.fleet.budget.refused, 1)

    def test_nothing_retried_once_the_client_has_a_byte(self) -> None:
        self.chat()
        body = self.backend.calls[0].respond(200, [b'{"message":{"content":"h"}}\n'], end=False)
        self.assertIn(b"200 OK", self.send_and_value())
        body.end(ConnectionError("gone"))
        self.backend.flush()
        self.assertEqual(len(self.backend.calls), 1)

    def test_five_failed_requests_make_a_backend_down(self) -> None:
        self.upstream.max_retries = 0
        for _ in range(5):
            self.backend.calls.clear()
            self.upstream.fleet.members["b"].enabled = False
            self.upstream.fleet.members["c"].enabled = False
            self.chat()
            self.respond(0, 502, b"{}")
            self.answer()
        self.assertEqual(self.fleet.members["a"].state, "down")
        self.assertEqual(self.fleet.members["a"].failures, 5)


class InFlightOverTheRequestPath(ProxyTestCase):
    """The property over the real request path: whatever each backend answers, and
    whenever clients hang up or time runs, each backend's in-flight count equals the
    requests really open at it, and everything is released at the end."""

    backend_limit = 2

    @settings(derandomize=True, deadline=None, max_examples=40)
    @given(st.lists(st.tuples(st.sampled_from(["chat", "ok", "503", "400", "hangup", "tick"]),
                              st.integers(0, 20)), max_size=40))
    def test_in_flight_equals_open_requests(self, ops: list[tuple[str, int]]) -> None:
        self.patch(max_concurrent=4, max_queue=20)
        fleet = Fleet(self.clock, random=random.Random(5))
        for name in ("a", "b"):
            fleet.add(Member(name, "ollama", b"http://" + name.encode(), OLLAMA_PATHS,
                             BackendGate(2, self.clock), BackendHealth(self.clock),
                             max_concurrent=2))
        self.upstream.fleet = fleet
        self.upstream._own_fleet = False
        self.backend.calls.clear()
        transports = []
        for op, n in ops:
            pending = [c for c in self.backend.calls if not c.answered]
            if op == "chat":
                protocol, transport = self.connect()
                protocol.dataReceived(http("POST", "/api/chat", CHAT, key=KEY))
                transports.append(protocol)
            elif op in ("ok", "503", "400") and pending:
                pending[n % len(pending)].respond(int(op) if op != "ok" else 200, OK)
            elif op == "hangup" and transports:
                transports.pop(n % len(transports)).connectionLost(
                    Failure(ConnectionRefusedError("gone")))
            elif op == "tick":
                self.clock.advance(n)
            for _ in range(5):
                self.backend.flush()
            open_at = {name: sum(1 for c in self.backend.calls if not c.answered
                                 and c.uri.split(b"/")[2] == name.encode())
                       for name in ("a", "b")}
            self.assertEqual({m.name: m.gate.in_use for m in fleet.members.values()}, open_at)
        for _ in range(50):
            pending = [c for c in self.backend.calls if not c.answered]
            if not pending:
                break
            for call in pending:
                call.respond(200, OK)
            self.backend.flush()
        self.clock.advance(3600)
        self.assertEqual([m.gate.in_use for m in fleet.members.values()], [0, 0])
        self.assertEqual(self.runtime.gate.in_use, 0)
