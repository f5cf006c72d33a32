"""Browser tests: Debian's ``chromium`` driven by the ``playwright`` package (no browser
download), against the real ``twistd -n flm`` and the fake model server (the e2e fixtures).

Skipped when chromium or playwright is missing, except in CI (``CI=true``), where that is
a failure: CI installs both (``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import (  # noqa: F401  (fixtures, re-exported for this folder)
    Gateway, _session_gateway, fake, fake_backend, fresh_gateway, gateway, gateway_factory)

CHROMIUM = os.environ.get("FLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Console:
    """Console errors and uncaught page errors, asserted empty after each test."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[int] = []
        self.allowed_text: list[str] = []

    def allow_status(self, status: int) -> None:
        """Chromium logs every HTTP error a fetch gets; one the test causes on purpose
        (and the page explains) is not a defect."""
        self.allowed.append(status)

    def allow_text(self, text: str) -> None:
        """A network error the test causes on purpose (FLM stopped under the page)."""
        self.allowed_text.append(text)

    def _expected(self, text: str) -> bool:
        return (any(f"status of {s} " in text for s in self.allowed)
                or any(t in text for t in self.allowed_text))

    def watch(self, page: Any) -> None:
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" and not self._expected(m.text) else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def new_page(browser: Any, console: Console) -> Iterator[Any]:
    """``new_page(viewport=...)``: a fresh context (own sessionStorage), errors watched."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        ctx = browser.new_context(viewport=options.pop("viewport", {"width": 1280, "height": 800}),
                                  **options)
        ctx.set_default_timeout(10_000)
        contexts.append(ctx)
        page = ctx.new_page()
        console.watch(page)
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert console.errors == [], console.errors


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url)
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="APIs").wait_for()
