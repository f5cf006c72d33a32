"""Query parameters from hypothesis against every admin route that reads them.

Never a 500; every 4xx has the contract's shape; every 422 names a parameter first; an
unknown parameter or body field has one code everywhere (``unknown_field``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from flm.admin.app import AdminApp
from flm.admin.observe import Observe
from flm.observe.logbuffer import LogBuffer
from flm.observe.metrics import Metrics
from tests.test_admin_apis import TOKEN, AdminTestCase, healthy
from tests.test_fuzz_admin import SETTINGS, PayloadTests

ABSURD = st.sampled_from([
    "1e300", "-1e300", "1e308", "1e309", "-1e309", "9" * 40, "-" + "9" * 40, "1e19", "9e18",
    "-1", "-0", "0", "0.5", "nan", "inf", "-inf", "NaN", "0x10", "1_000", " 1", "",
    "0001-01-01", "253402300799", "253402300740", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00-14:00",
    "2024-05-01T12:00:00Z", "2024-13-01", "5xx", "500", "0xx", "999", "\x00", "%",
    "YQ", "bDk5OTk5OTk5OTk5OTk5OTk5OTk5", "running", "target", "1",
])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
VALUES = st.one_of(ABSURD, TEXT)
ROUTES = {
    "/api/apis": ["limit", "cursor", "status"],
    "/api/apis/target/logs": ["limit", "cursor", "status", "since", "until"],
    "/api/logs": ["limit", "cursor", "status", "since", "until", "api"],
    "/api/apis/target/metrics": ["since", "until"],
    "/api/system": [],
    "/api/apis/target": [],
}


class QueryTests(AdminTestCase):
    """The admin harness with the observability routes wired to the same store."""

    call = PayloadTests.call

    def setUp(self) -> None:
        super().setUp()
        self.create("target", start=False)
        clock = Clock()
        clock.advance(1_700_000_000)
        buffer = LogBuffer(self.store, clock)
        metrics = Metrics(self.store, clock, registry=self.registry, logbuffer=buffer)
        observe = Observe(self.store, metrics=metrics, monitor=None, registry=self.registry,
                          logbuffer=buffer, clock=clock)
        self.admin = AdminApp(token=TOKEN, apis=self.admin.apis, health=healthy,
                              observe=observe)
        from treq.testing import StubTreq
        self.stub = StubTreq(self.admin.resource())

    def check_query(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        status, body, _ = self.call("GET", path + ("?" + urlencode(query) if query else ""))
        self.assertLess(status, 500, body)
        if status >= 400:
            self.assertEqual(set(body), {"error"}, body)
            self.assertEqual(set(body["error"]), {"code", "message"}, body)
            self.assertRegex(body["error"]["code"], r"^[a-z][a-z0-9_]*$")
        if status == 422:
            named = [*query, "limit", "cursor", "status", "since", "until", "api"]
            self.assertTrue(any(body["error"]["message"].startswith(f + ":") for f in named),
                            body)
        return status, body

    def test_absurd_times_are_422(self) -> None:
        for query in ({"since": "1e300"}, {"until": "1e300"}, {"since": "-1e300"},
                      {"since": "0001-01-01T00:00:00Z"}, {"until": "10000-01-01"}):
            for path in ("/api/apis/target/metrics", "/api/apis/target/logs", "/api/logs"):
                status, body = self.check_query(path, query)
                self.assertEqual(status, 422, (path, query, body))
                self.assertEqual(body["error"]["code"], "invalid_field")
        # the default window after the last time there is cannot be printed
        status, body = self.check_query("/api/apis/target/metrics", {"since": "253402300799"})
        self.assertEqual(status, 422, body)

    def test_unknown_parameter_and_field_share_one_code(self) -> None:
        for path in ("/api/apis/target/metrics", "/api/apis/target/logs"):
            status, body = self.check_query(path, {"colour": "red"})
            self.assertEqual((status, body["error"]["code"]), (422, "unknown_field"))
        status, body, _ = self.call("POST", "/api/apis", {"name": "x", "model": "m", "colour": 1})
        self.assertEqual((status, body["error"]["code"]), (422, "unknown_field"))

    @SETTINGS
    @given(path=st.sampled_from(sorted(ROUTES)), data=st.data())
    def test_every_query_parameter(self, path: str, data: Any) -> None:
        names = st.one_of(st.sampled_from(ROUTES[path] or ["x"]), st.text(st.characters(blacklist_categories=("Cs",)), max_size=6))
        query = data.draw(st.dictionaries(names, VALUES, max_size=3))
        self.check_query(path, query)
