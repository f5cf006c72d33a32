"""``GET /metrics`` over the real admin app and store: deleted APIs leave no series, and
beyond loopback the scrape needs the admin token unless ``metrics_public`` is set."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock

from flm.admin.app import AdminApp
from flm.admin.observe import Observe
from flm.observe.logbuffer import LogBuffer
from flm.observe.metrics import Metrics
from tests.test_admin_apis import TOKEN, AdminTestCase, healthy
from tests.test_logs_api import log_row


class MetricsEndpointTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        buffer = LogBuffer(self.store, self.clock)
        self.metrics = Metrics(self.store, self.clock, registry=self.registry, logbuffer=buffer)
        self.observe = Observe(self.store, metrics=self.metrics, monitor=None,
                               registry=self.registry, logbuffer=buffer, clock=self.clock)
        self.admin.apis.forget = self.metrics.forget
        self.mount()

    def mount(self, **options: Any) -> None:
        self.admin = AdminApp(token=TOKEN, apis=self.admin.apis, health=healthy,
                              observe=self.observe, **options)
        self.stub = StubTreq(self.admin.resource())

    def scrape(self, token: str | None = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        d = self.stub.get("http://127.0.0.1/metrics", headers=headers)
        self.stub.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content()).decode()

    def api_labels(self) -> set[str]:
        code, text = self.scrape()
        self.assertEqual(code, 200, text)
        return {s.labels["api"] for f in text_string_to_metric_families(text)
                for s in f.samples if "api" in s.labels}

    def test_a_deleted_api_leaves_no_series(self) -> None:
        keep, gone = self.create("keep"), self.create("gone")
        for api in (keep, gone):
            self.metrics.observe(log_row(api["id"], self.clock.seconds(), 200,
                                         prompt_tokens=3, completion_tokens=4))
        self.assertEqual(self.api_labels(), {str(keep["id"]), str(gone["id"])})
        self.assertEqual(self.call("DELETE", f"/api/apis/{gone['id']}")[0], 204)
        self.assertEqual(self.api_labels(), {str(keep["id"])})
        # a request that ends after the delete does not bring the series (or a rollup) back
        self.metrics.observe(log_row(gone["id"], self.clock.seconds(), 200))
        self.assertEqual(self.api_labels(), {str(keep["id"])})
        self.assertEqual({k[0] for k in self.metrics.minutes}, {keep["id"]})

    def test_beyond_loopback_the_scrape_needs_the_token(self) -> None:
        self.create("secret-name")
        self.mount(admin_loopback=False)
        code, text = self.scrape()
        self.assertEqual(code, 401, text)
        self.assertNotIn("secret-name", text)
        code, text = self.scrape(TOKEN)
        self.assertEqual(code, 200)
        self.assertIn("secret-name", text)
        self.assertEqual(self.scrape("wrong")[0], 401)
        self.mount(admin_loopback=False, metrics_public=True)
        self.assertEqual(self.scrape()[0], 200)

    def test_on_loopback_no_token_is_needed(self) -> None:
        self.mount(admin_loopback=True)
        self.assertEqual(self.scrape()[0], 200)
