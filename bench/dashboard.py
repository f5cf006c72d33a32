"""The dashboard, measured in headless Chromium against the real service.

    python -m bench.dashboard                       # the figures (docs/benchmarks.md)
    python -m bench.dashboard --screenshots docs/screenshots   # one PNG per main view

Starts the fake model server and ``twistd -n flm`` on loopback (the e2e fixtures' own
classes), creates 1,000 APIs, and measures in the page (``performance.now()`` and
``Date.now()``, each time taken in the next animation frame, i.e. when it can be seen):
sign-in to the 1,000-API list rendered; a Stop/Start click to visible feedback; a finished
request to its log row on screen; and the page weight gzipped. Needs Debian's ``chromium``
and the ``playwright`` package (the test extras).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from flm.admin.dashboard import Dashboard
from tests.e2e.conftest import Gateway, free_port, port_open, wait_for
from tests.fakes.backend import FakeProcess

CHROMIUM = "/usr/bin/chromium"
N_APIS = 1000

MARK_SIGN_IN = """() => {
  window.__t0 = null; window.__t1 = null;
  document.addEventListener('submit', () => { window.__t0 = performance.now(); }, {capture: true, once: true});
  const obs = new MutationObserver(() => {
    const count = document.querySelector('.toolbar [role=status]');
    if (window.__t0 !== null && count && count.textContent.startsWith('%d of %d')
        && document.querySelector('.vrow')) {
      obs.disconnect();
      requestAnimationFrame(() => { window.__t1 = performance.now(); });
    }
  });
  obs.observe(document.body, {childList: true, subtree: true, characterData: true});
}""" % (N_APIS, N_APIS)

MARK_CLICK = """(name) => {
  window.__t0 = null; window.__t1 = null;
  document.addEventListener('click', () => { window.__t0 = performance.now(); }, {capture: true, once: true});
  const obs = new MutationObserver(() => {
    const b = [...document.querySelectorAll('.vrow button')].find(x => x.getAttribute('aria-label').endsWith(' ' + name));
    if (window.__t0 !== null && b && b.disabled) {
      obs.disconnect();
      requestAnimationFrame(() => { window.__t1 = performance.now(); });
    }
  });
  obs.observe(document.body, {childList: true, subtree: true});
}"""

MARK_LOG = """() => {
  window.__seen = {};
  const obs = new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      const id = n.dataset && n.dataset.requestId;
      if (id) requestAnimationFrame(() => { window.__seen[id] = Date.now(); });
    }
  });
  obs.observe(document.querySelector('table[aria-label="Request log"] tbody'), {childList: true});
}"""


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1),
            "n": len(values)}


class Setup:
    """A fake model server and FLM with ``N_APIS`` stopped APIs and one running one."""

    def __init__(self, tmp: Path) -> None:
        self.fake = FakeProcess(str(tmp / "fake.log")).start()
        self.gw = Gateway(tmp, self.fake)
        self.gw.start()
        auth = {"Authorization": f"Bearer {self.gw.token}"}

        def create(i: int) -> None:
            r = self.gw.http.post(self.gw.admin_url + "/api/apis", headers=auth, json={
                "name": f"team-{i:04d}", "model": "llama3.2:1b", "start": False})
            assert r.status_code == 201, r.text
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(create, range(N_APIS - 1)))
        self.live = self.gw.create_api(name="chat-live", port=free_port())
        wait_for(lambda: port_open(self.live["port"]), 5, "the live API's port")

    def call(self) -> tuple[str, float]:
        r = httpx.post(f"http://127.0.0.1:{self.live['port']}/v1/chat/completions",
                       headers={"Authorization": f"Bearer {self.live['key']}"}, timeout=10,
                       json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]})
        done = time.time() * 1000
        r.raise_for_status()
        return r.headers["x-request-id"], done

    def close(self) -> None:
        self.gw.kill()
        self.fake.stop()


def _sign_in(page: Any, setup: Setup) -> None:
    page.goto(setup.gw.admin_url + "/")
    page.get_by_label("Admin token").fill(setup.gw.token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"{N_APIS} of {N_APIS} APIs").wait_for()


def measure(browser: Any, setup: Setup, rounds: int) -> dict[str, Any]:
    sign_in_ms = []
    for _ in range(rounds):
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(setup.gw.admin_url + "/")
        page.get_by_label("Admin token").fill(setup.gw.token)
        page.evaluate(MARK_SIGN_IN)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_function("() => window.__t1 !== null")
        sign_in_ms.append(page.evaluate("window.__t1 - window.__t0"))
        ctx.close()

    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    _sign_in(page, setup)
    page.get_by_role("searchbox").fill("chat-live")
    click_ms = []
    for i in range(rounds * 2):
        label = "Stop" if i % 2 == 0 else "Start"
        other = "Start" if label == "Stop" else "Stop"
        page.evaluate(MARK_CLICK, "chat-live")
        page.get_by_role("button", name=f"{label} chat-live").click()
        page.wait_for_function("() => window.__t1 !== null")
        click_ms.append(page.evaluate("window.__t1 - window.__t0"))
        page.get_by_role("button", name=f"{other} chat-live").wait_for()
    wait_for(lambda: port_open(setup.live["port"]), 5, "the live API's port")

    page.get_by_role("link", name="chat-live").click()
    page.get_by_role("table", name="Request log").wait_for()
    page.get_by_role("status").filter(has_text="Live").wait_for()
    page.evaluate(MARK_LOG)
    log_ms = []
    for _ in range(rounds * 2):
        request_id, done = setup.call()
        page.wait_for_function(f"() => window.__seen[{json.dumps(request_id)}] !== undefined")
        log_ms.append(page.evaluate(f"window.__seen[{json.dumps(request_id)}]") - done)
    ctx.close()

    files = Dashboard().files
    weight = {name: len(gzip.compress(body, 9)) for name, (_, body, _) in files.items()}
    return {"sign_in_to_1000_apis_ms": _stats(sign_in_ms),
            "start_stop_click_to_feedback_ms": _stats(click_ms),
            "request_done_to_log_row_ms": _stats(log_ms),
            "page_weight_gzip_bytes": {"total": sum(weight.values()), **weight},
            "page_weight_raw_bytes": sum(len(b) for _, b, _ in files.values())}


def screenshots(browser: Any, setup: Setup, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(12):
        setup.call()
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    shots = []

    def shot(name: str) -> None:
        path = out / f"{name}.png"
        page.screenshot(path=str(path))
        shots.append(path)

    page.goto(setup.gw.admin_url + "/")
    shot("sign-in")
    _sign_in(page, setup)
    page.locator(".vrow").first.wait_for()
    page.wait_for_timeout(600)  # the visible rows' request counts arrive
    shot("apis")
    page.get_by_role("button", name="New API").click()
    page.get_by_label("Name").fill("support-bot")
    page.get_by_label("Port").fill(str(free_port()))
    page.get_by_role("button", name="Create").click()
    page.get_by_role("button", name="Copy").wait_for()
    shot("new-api-key")
    page.goto(setup.gw.admin_url + f"/#/apis/{setup.live['id']}")
    page.get_by_role("table", name="Request log").get_by_role("row").nth(3).wait_for()
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "api.png"), full_page=True)
    shots.append(out / "api.png")
    page.get_by_role("link", name="Models").click()
    setup.fake.configure(pull_interval=0.2)
    page.get_by_label("Model name").fill("qwen2.5:0.5b")
    page.get_by_role("button", name="Pull").click()
    page.wait_for_function("""() => { const b = document.querySelector('[role=progressbar]');
        return b && Number(b.getAttribute('aria-valuenow')) > 30; }""")
    shot("models")
    page.get_by_role("link", name="Backends").click()
    page.wait_for_timeout(300)
    shot("backends")
    page.get_by_role("link", name="System").click()
    page.get_by_text("Dropped log rows").wait_for()
    shot("system")
    phone = browser.new_context(viewport={"width": 390, "height": 844})
    p2 = phone.new_page()
    p2.goto(setup.gw.admin_url + "/")
    p2.get_by_label("Admin token").fill(setup.gw.token)
    p2.get_by_role("button", name="Sign in").click()
    p2.get_by_text(f"of {N_APIS + 1} APIs").wait_for()
    p2.screenshot(path=str(out / "apis-phone.png"))
    shots.append(out / "apis-phone.png")
    ctx.close()
    phone.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshots", type=Path, help="write PNGs of each view here")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix="flm-dash-") as tmp:
        setup = Setup(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                if args.screenshots:
                    for path in screenshots(browser, setup, args.screenshots):
                        print(path)
                else:
                    print(json.dumps(measure(browser, setup, args.rounds), indent=2))
                browser.close()
        finally:
            setup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
