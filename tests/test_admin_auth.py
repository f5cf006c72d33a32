"""Auth is the default for every admin route under ``/api/``: enumerate Klein's url_map and
call each route, with each of its methods, without a token and with a wrong one."""

from __future__ import annotations

import json
import re
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from flm.admin.app import AdminApp

TOKEN = "the-admin-token"


class Untouchable:
    """Stands in for every operation: a route that reaches one before auth fails."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} reached without auth")


def api_routes() -> list[tuple[str, str]]:
    routes = []
    for rule in AdminApp.app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        for method in sorted(rule.methods or ()):
            if method not in ("HEAD", "OPTIONS"):
                routes.append((method, path))
    return routes


class AuthByDefaultTests(SynchronousTestCase):
    def setUp(self) -> None:
        untouchable: Any = Untouchable()
        self.client = StubTreq(AdminApp(token=TOKEN, apis=untouchable, health=untouchable,
                                        models=untouchable, observe=untouchable).resource())

    def status(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        d = self.client.request(method, "http://admin" + path, headers=headers, data=b"{}")
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.client.content(response))
        return response.code, (json.loads(body) if body else None), response.headers

    def test_every_api_route_is_401_without_the_token(self) -> None:
        routes = api_routes()
        self.assertGreater(len(routes), 15)  # the enumeration found the routes
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                code, body, response_headers = self.status(method, path, headers)
                self.assertEqual((method, path, code), (method, path, 401))
                self.assertEqual(body["error"]["code"], "unauthorized")
                self.assertEqual(response_headers.getRawHeaders(b"www-authenticate"),
                                 [b"Bearer"])

    def test_models_is_a_subroute_of_the_one_app(self) -> None:
        paths = {path for _, path in api_routes()}
        self.assertTrue({"/api/models/", "/api/models/pull", "/api/models/pulls/x",
                         "/api/models/pulls/x/events", "/api/models/refresh"} <= paths)
