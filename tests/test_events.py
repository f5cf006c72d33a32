"""``GET /api/events``: filtering by type, bounded memory for a slow reader, cleanup on
disconnect. Driven through the real admin app and Twisted's HTTP channel over a
``StringTransport`` (the channel pauses the stream exactly as a full socket would)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from flm.admin.app import AdminApp
from flm.admin.events import EventHub
from tests.test_admin_apis import AdminTestCase

TOKEN = "events-token"


def _events(raw: bytes) -> list[tuple[str, Any]]:
    body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    out = []
    for block in body.decode().split("\n\n"):
        lines = [ln.split(": ", 1)[-1] if ":" in ln else ln
                 for ln in block.splitlines() if not ln.startswith(":")]
        fields = dict(ln.split(": ", 1) for ln in block.splitlines()
                      if ": " in ln and not ln.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
        del lines
    return out


class EventsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.hub = EventHub(self.clock, max_queue=50, heartbeat_s=15)
        app = AdminApp(token=TOKEN, apis=None, health=None, events=self.hub)  # type: ignore
        self.site = Site(app.resource(), reactor=self.clock)

    def open(self, query: str = "", token: str = TOKEN) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(f"GET /api/events{query} HTTP/1.1\r\nHost: localhost\r\n"
                             f"Authorization: Bearer {token}\r\n\r\n".encode())
        return channel, transport

    def test_stream_carries_only_the_types_asked_for(self) -> None:
        _, transport = self.open("?types=log,api")
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"text/event-stream", transport.value())
        self.hub.publish("api", {"action": "created", "api": {"id": 1}})
        self.hub.publish("pull", {"job": "x", "percent": 50.0})
        self.hub.log_row((1, 1_700_000_000.0, "POST", "/v1/chat/completions", 200, 1, 2, 3, 4,
                          5, 6, "m", 1, 2, "req-1", None, 7, "default"))
        events = _events(transport.value())
        self.assertEqual([e[0] for e in events], ["api", "log"])
        self.assertEqual(events[1][1]["request_id"], "req-1")
        self.assertEqual(events[1][1]["created_at"], "2023-11-14T22:13:20.000Z")

    def test_unknown_type_and_wrong_token_are_refused_in_words(self) -> None:
        _, transport = self.open("?types=log,nope")
        self.assertIn(b"422", transport.value().split(b"\r\n")[0])
        self.assertIn(b"types: unknown event type 'nope'", transport.value())
        _, transport = self.open(token="wrong")
        self.assertIn(b"401", transport.value().split(b"\r\n")[0])
        self.assertEqual(self.hub.subscribers, set())

    def test_slow_reader_is_bounded_then_dropped(self) -> None:
        channel, transport = self.open("?types=log")
        (sub,) = self.hub.subscribers
        transport.producer.pauseProducing()  # the socket is full: the transport pushes back
        before = len(transport.value())
        for i in range(49):
            self.hub.publish("log", {"n": i})
        self.assertEqual(len(sub.queue), 49)
        self.assertEqual(len(transport.value()), before)  # nothing written while paused
        for i in range(10_000):
            self.hub.publish("log", {"n": i})
        self.assertEqual(self.hub.subscribers, set())  # dropped, not grown
        self.assertEqual(len(sub.queue), 0)
        self.assertEqual(self.hub.dropped, 1)
        self.assertIn(b"event: overflow", transport.value())

    def test_a_paused_reader_that_catches_up_gets_everything_in_order(self) -> None:
        channel, transport = self.open("?types=log")
        transport.producer.pauseProducing()
        for i in range(20):
            self.hub.publish("log", {"n": i})
        transport.producer.resumeProducing()
        self.assertEqual([d["n"] for _, d in _events(transport.value())], list(range(20)))

    def test_disconnect_cleans_up(self) -> None:
        channel, transport = self.open()
        self.assertEqual(len(self.hub.subscribers), 1)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.hub.subscribers, set())
        self.hub.publish("api", {"x": 1})  # nobody left: nothing happens, nothing kept
        self.clock.advance(60)  # no keep-alive loop left running either
        self.assertFalse(self.clock.getDelayedCalls())

    def test_keepalive_comments(self) -> None:
        _, transport = self.open()
        self.clock.advance(15)
        self.assertIn(b": ping\n\n", transport.value())


class MutationsPublishTests(AdminTestCase):
    """The admin mutations tell the hub what changed (create, stop, start, update, delete;
    key create, revoke, rotate), and never a secret."""

    def test_api_and_key_changes_are_published(self) -> None:
        seen: list[tuple[str, str, Any]] = []
        self.admin.apis.publish = lambda action, obj: seen.append(("api", action, obj))
        self.admin.apis.keys.publish = lambda action, obj: seen.append(("key", action, obj))
        api = self.create("chat", start=False)
        self.call("POST", f"/api/apis/{api['id']}/start")
        self.call("POST", f"/api/apis/{api['id']}/stop")
        self.call("PATCH", f"/api/apis/{api['id']}", {"max_queue": 5})
        status, key, _ = self.call("POST", f"/api/apis/{api['id']}/keys", {"name": "ci"})
        self.assertEqual(status, 201)
        self.call("POST", f"/api/apis/{api['id']}/keys/ci/rotate", {})
        self.call("DELETE", f"/api/apis/{api['id']}/keys/ci")
        self.call("DELETE", f"/api/apis/{api['id']}")
        self.assertEqual([(k, a) for k, a, _ in seen], [
            ("api", "created"), ("api", "started"), ("api", "stopped"), ("api", "updated"),
            ("key", "created"), ("key", "rotated"), ("key", "revoked"), ("api", "deleted")])
        self.assertEqual(seen[3][2]["api"]["max_queue"], 5)
        self.assertEqual(seen[6][2]["key"]["status"], "revoked")
        self.assertNotIn(key["key"], repr(seen))
        self.assertNotIn(api["key"], repr(seen))
