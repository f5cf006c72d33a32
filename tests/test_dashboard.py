"""``GET /``: the dashboard's files from inside the package, with a strict CSP, relative
URLs only, no inline script, and a page weight under 100 KB gzipped."""

from __future__ import annotations

import configparser
import gzip
import re
from pathlib import Path

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from flm.admin.app import AdminApp
from flm.admin.dashboard import STATIC, Dashboard

ROOT = Path(__file__).resolve().parent.parent


class DashboardTests(SynchronousTestCase):
    def setUp(self) -> None:
        app = AdminApp(token="t", apis=None, health=None)  # type: ignore[arg-type]
        self.treq = StubTreq(app.resource())

    def get(self, path: str, **kw: object) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        response = self.successResultOf(self.treq.get("http://localhost" + path, **kw))
        body = self.successResultOf(response.content())
        return response.code, dict(response.headers.getAllRawHeaders()), body

    def test_index_is_served_without_a_token_with_a_strict_csp(self) -> None:
        code, headers, body = self.get("/")
        self.assertEqual(code, 200)
        self.assertIn(b"text/html", headers[b"Content-Type"][0])
        csp = headers[b"Content-Security-Policy"][0]
        self.assertIn(b"script-src 'self';", csp)
        self.assertNotIn(b"unsafe-inline", csp)
        self.assertNotIn(b"unsafe-eval", csp)
        self.assertIn(b"default-src 'none'", csp)
        self.assertIn(b'<script type="module" src="static/app.js">', body)

    def test_every_file_is_served_and_others_are_a_json_404(self) -> None:
        for name in Dashboard().files:
            if name == "index.html":
                continue
            code, headers, _ = self.get(f"/static/{name}")
            self.assertEqual(code, 200, name)
            self.assertIn(b"Content-Security-Policy", headers)
        code, _, body = self.get("/static/../app.py")
        self.assertEqual(code, 404)
        code, _, body = self.get("/static/nothing.js")
        self.assertEqual((code, b'"not_found"' in body), (404, True))

    def test_an_unchanged_file_is_a_304(self) -> None:
        _, headers, _ = self.get("/static/app.js")
        code, _, body = self.get("/static/app.js",
                                 headers={b"If-None-Match": headers[b"ETag"][0]})
        self.assertEqual((code, body), (304, b""))

    def test_no_inline_script_no_eval_and_relative_urls_only(self) -> None:
        html = (STATIC / "index.html").read_text()
        self.assertNotRegex(html, r"<script(?![^>]*\bsrc=)")  # every script is a file
        self.assertNotRegex(html, r"\son[a-z]+=")  # no inline handlers
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            self.assertFalse(url.startswith(("/", "http:", "https:")), url)
        js = (STATIC / "app.js").read_text()
        self.assertNotRegex(js, r"\beval\(|new Function\(")
        for url in re.findall(r'(?:fetch|call\("[A-Z]+",)\s*\(?[`"]([^`"]+)', js):
            self.assertFalse(url.startswith(("/", "http")), url)

    def test_whole_page_under_100_kb_gzipped(self) -> None:
        total = sum(len(gzip.compress(body)) for _, body, _ in Dashboard().files.values())
        self.assertLess(total, 100 * 1024)

    def test_the_package_ships_the_static_files(self) -> None:
        cfg = configparser.ConfigParser()
        cfg.read(ROOT / "setup.cfg")
        patterns = cfg["options.package_data"]["flm.admin"]
        self.assertIn("static/*", patterns)
