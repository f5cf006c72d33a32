"""The dashboard in headless Chromium against the real service (see conftest.py).

Every test also asserts that the page logged no console error (the ``new_page`` fixture).
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.browser.conftest import sign_in
from tests.e2e.conftest import Gateway, free_port, port_open, wait_for
from tests.fakes.backend import FakeProcess


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect
    return pw_expect(locator)


def chat(api: dict[str, Any], key: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{api['port']}/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"}, timeout=10,
                      json={"model": api["model"], "messages": [{"role": "user", "content": "hi"}]})


def test_sign_in_wrong_token_is_said_then_right_token(gateway: Gateway, new_page: Any,
                                                        console: Any) -> None:
    console.allow_status(401)
    page = new_page()
    page.goto(gateway.admin_url + "/")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That admin token is wrong")
    page.get_by_label("Admin token").fill(gateway.token)
    page.get_by_role("button", name="Sign in").click()
    for name in ("APIs", "Backends", "Models", "System"):
        expect(page.get_by_role("link", name=name)).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('flm-admin-token')") == gateway.token


def test_filter_a_thousand_apis(fresh_gateway: Gateway, new_page: Any) -> None:
    gw = fresh_gateway

    def create(i: int) -> None:
        r = gw.http.post(gw.admin_url + "/api/apis", headers={"Authorization": f"Bearer {gw.token}"},
                         json={"name": f"bulk-{i:04d}", "model": "llama3.2:1b", "start": False})
        assert r.status_code == 201, r.text
    with ThreadPoolExecutor(2) as pool:  # more would race for free ports (409, "try again")
        list(pool.map(create, range(1000)))
    page = new_page()
    sign_in(page, gw.admin_url + "/", gw.token)
    expect(page.get_by_text("1000 of 1000 APIs")).to_be_visible()
    rows = page.locator(".vrow")
    assert 5 < rows.count() < 60  # only the rows in view exist
    page.get_by_role("searchbox").fill("bulk-0777")
    expect(page.get_by_text("1 of 1000 APIs")).to_be_visible()
    expect(page.get_by_role("link", name="bulk-0777")).to_be_visible()
    assert rows.count() == 1
    page.get_by_role("searchbox").fill("")
    page.locator(".vlist").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(page.get_by_role("link", name="bulk-0999")).to_be_visible()


def test_create_an_api_read_its_key_call_it_and_see_the_log_row(gateway: Gateway,
                                                                new_page: Any) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("button", name="New API").click()
    name = f"web-{uuid.uuid4().hex[:8]}"
    page.get_by_label("Name").fill(name)
    expect(page.get_by_label("Model").locator("option", has_text="llama3.2:1b")).to_be_attached()
    page.get_by_label("Model").select_option("llama3.2:1b")
    port = free_port()
    page.get_by_label("Port").fill(str(port))
    page.get_by_role("button", name="Create").click()
    key = page.get_by_label("Key", exact=True).inner_text().strip()
    assert key
    expect(page.get_by_label("curl snippet")).to_contain_text(f"Bearer {key}")
    expect(page.get_by_label("Python snippet")).to_contain_text(f'api_key="{key}"')
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_text("Copied.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_role("heading", name=re.compile(name))).to_be_visible()
    expect(page.get_by_role("table", name="Request log")).to_be_visible()
    wait_for(lambda: port_open(port), 5, "the new API's port")
    reply = chat({"port": port, "model": "llama3.2:1b"}, key)
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["x-request-id"]
    expect(page.get_by_role("table", name="Request log").get_by_text(request_id)).to_be_visible(
        timeout=3000)  # no reload: it came through the event stream


def test_stop_and_start_from_the_list(gateway: Gateway, new_page: Any) -> None:
    api = gateway.create_api()
    page = new_page()
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("searchbox").fill(api["name"])
    page.get_by_role("button", name=f"Stop {api['name']}").click()
    expect(page.get_by_role("button", name=f"Start {api['name']}")).to_be_visible()
    assert gateway.admin("GET", f"/api/apis/{api['id']}").json()["status"] == "stopped"
    wait_for(lambda: not port_open(api["port"]), 5, "the port to close")
    page.get_by_role("button", name=f"Start {api['name']}").click()
    expect(page.get_by_role("button", name=f"Stop {api['name']}")).to_be_visible()
    wait_for(lambda: port_open(api["port"]), 5, "the port to open")


def test_api_page_stop_start_create_and_revoke_a_key(gateway: Gateway, new_page: Any) -> None:
    api = gateway.create_api()
    page = new_page()
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("searchbox").fill(api["name"])
    page.get_by_role("link", name=api["name"]).click()
    # the queue, per backend the API may use
    expect(page.get_by_text("Backend default (up, all APIs)")).to_be_visible()
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Start")).to_be_visible()
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    page.get_by_label("Key name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Key", exact=True).inner_text().strip()
    keys = page.get_by_role("table", name="Keys")
    expect(keys.get_by_role("row", name=re.compile("laptop"))).to_contain_text("active")
    wait_for(lambda: port_open(api["port"]), 5, "the port")
    assert chat(api, secret).status_code == 200
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Revoke laptop").click()
    expect(keys.get_by_role("row", name=re.compile("laptop"))).to_contain_text("revoked")
    assert chat(api, secret).status_code == 401


def test_pull_a_model_and_watch_the_bar_reach_100(gateway: Gateway, new_page: Any) -> None:
    gateway.fake.configure(pull_interval=0.02)
    page = new_page()
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("link", name="Models").click()
    name = f"tiny{uuid.uuid4().hex[:6]}:1b"
    page.get_by_label("Model name").fill(name)
    page.get_by_role("button", name="Pull").click()
    bar = page.get_by_role("progressbar", name=f"Pulling {name}")
    expect(bar).to_be_visible()
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=15_000)
    expect(page.get_by_role("table", name="Models")).to_contain_text(name)


def test_deleting_a_model_in_use_is_refused_in_words(gateway: Gateway, new_page: Any,
                                                     console: Any) -> None:
    console.allow_status(409)
    gateway.create_api()
    page = new_page()
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("link", name="Models").click()
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete llama3.2:1b").click()
    expect(page.get_by_role("alert")).to_contain_text("is used by a running API")


def test_system_page(gateway: Gateway, new_page: Any) -> None:
    page = new_page()
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("link", name="System").click()
    for label in ("Memory", "CPU", "Uptime", "Open connections", "Dropped log rows", "Database"):
        expect(page.get_by_text(label, exact=True)).to_be_visible()
    expect(page.get_by_text("writable")).to_be_visible()


def test_backends_page_without_the_backends_api_says_so(gateway: Gateway, new_page: Any,
                                                        console: Any) -> None:
    console.allow_status(404)
    if gateway.admin("GET", "/api/backends").status_code != 404:
        pytest.skip("this FLM has /api/backends: see test_a_killed_backend_goes_down")
    page = new_page()
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("link", name="Backends").click()
    expect(page.get_by_role("status").filter(has_text="not available")).to_be_visible()


def test_a_killed_backend_goes_down(gateway_factory: Any, new_page: Any) -> None:
    gw = gateway_factory()
    if gw.admin("GET", "/api/backends").status_code == 404:
        pytest.skip("several backends (GET /api/backends) are not built yet; "
                    "the Backends page shows 'not available' until they are")
    page = new_page()
    sign_in(page, gw.admin_url + "/", gw.token)
    page.get_by_role("link", name="Backends").click()
    table = page.get_by_role("table", name="Backends")
    expect(table).to_contain_text("up")
    gw.fake.stop()
    expect(table).to_contain_text("down", timeout=30_000)


def test_works_behind_a_reverse_proxy_under_a_sub_path(gateway: Gateway, new_page: Any) -> None:
    port = free_port()
    requests: list[str] = []
    page = None
    proxy = subprocess.Popen([sys.executable, "-m", "tests.browser.subpath_proxy", str(port),
                              str(gateway.admin_port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), 10, "the reverse proxy")
        api = gateway.create_api()
        page = new_page()
        page.on("request", lambda r: requests.append(r.url))
        sign_in(page, f"http://127.0.0.1:{port}/flm/", gateway.token)
        assert not [r for r in requests if "/flm/" not in r], requests  # every URL relative
        expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
        page.get_by_role("searchbox").fill(api["name"])
        page.get_by_role("link", name=api["name"]).click()
        assert page.url.startswith(f"http://127.0.0.1:{port}/flm/")
        reply = chat(api, api["key"])
        expect(page.get_by_text(reply.headers["x-request-id"])).to_be_visible()
    finally:
        if page is not None:
            page.close()  # before the proxy goes: its open event stream would be cut
        proxy.terminate()
        proxy.wait(10)


def test_phone_width_is_readable(gateway: Gateway, new_page: Any) -> None:
    page = new_page(viewport={"width": 390, "height": 844})
    sign_in(page, gateway.admin_url + "/", gateway.token)
    expect(page.get_by_role("button", name="New API")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1


def test_keyboard_sign_in_and_navigation(gateway: Gateway, new_page: Any) -> None:
    page = new_page()
    page.goto(gateway.admin_url + "/")
    page.keyboard.type(gateway.token)  # the token field has the focus
    page.keyboard.press("Enter")
    page.get_by_role("link", name="APIs").wait_for()
    page.get_by_role("link", name="Models").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Model name")).to_be_visible()


def test_a_taken_name_is_said_in_words(gateway: Gateway, new_page: Any, console: Any) -> None:
    console.allow_status(409)
    api = gateway.create_api()
    page = new_page()
    sign_in(page, gateway.admin_url + "/", gateway.token)
    page.get_by_role("button", name="New API").click()
    page.get_by_label("Name").fill(api["name"])
    expect(page.get_by_label("Model").locator("option", has_text="llama3.2:1b")).to_be_attached()
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("form", name="New API").get_by_role("alert")).to_have_text(
        "name: another API already has it")


def test_stale_badge_while_flm_is_down_then_live_again(fresh_gateway: Gateway, new_page: Any,
                                                       console: Any) -> None:
    for text in ("ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED_ENCODING",
                 "ERR_EMPTY_RESPONSE", "ERR_CONNECTION_RESET"):
        console.allow_text(text)
    page = new_page()
    sign_in(page, fresh_gateway.admin_url + "/", fresh_gateway.token)
    badge = page.get_by_role("status").filter(has_text=re.compile("Live|Stale"))
    expect(badge).to_have_text("Live")
    fresh_gateway.stop()
    expect(badge).to_contain_text("Stale")
    fresh_gateway.start()
    expect(badge).to_have_text("Live", timeout=15_000)


def test_add_edit_and_disable_a_backend(gateway_factory: Any, new_page: Any, console: Any,
                                        tmp_path: Any) -> None:
    console.allow_status(422)  # the wrong URL below, said in words
    gw = gateway_factory()
    second = FakeProcess(str(tmp_path / "second.log")).start()
    try:
        page = new_page()
        sign_in(page, gw.admin_url + "/", gw.token)
        page.get_by_role("link", name="Backends").click()
        page.get_by_role("button", name="Add backend").click()
        form = page.get_by_role("form", name="Add backend")
        form.get_by_label("Name").fill("gpu-box")
        form.get_by_label("URL").fill(second.url)
        form.get_by_label("Max concurrent").fill("3")
        form.get_by_role("button", name="Save").click()
        table = page.get_by_role("table", name="Backends")
        row = table.get_by_role("row", name=re.compile("gpu-box"))
        expect(row).to_contain_text("up", timeout=20_000)
        expect(row).to_contain_text("of 3")
        page.get_by_role("button", name="Edit gpu-box").click()
        page.get_by_role("form", name="Edit gpu-box").get_by_label("Weight").fill("5")
        page.get_by_role("form", name="Edit gpu-box").get_by_role("button", name="Save").click()
        page.get_by_role("button", name="Disable gpu-box").click()
        expect(row).to_contain_text("disabled")
        stored = gw.admin("GET", "/api/backends/gpu-box").json()
        assert (stored["weight"], stored["enabled"], stored["max_concurrent"]) == (5, False, 3)
        page.get_by_role("button", name="Add backend").click()  # a wrong URL is said in words
        form = page.get_by_role("form", name="Add backend")
        form.get_by_label("Name").fill("bad")
        form.get_by_label("URL").fill("localhost:11434")
        form.get_by_role("button", name="Save").click()
        expect(form.get_by_role("alert")).to_contain_text("url")
    finally:
        second.stop()
