"""``flm keys`` against the real service: what a person does with keys, end to end."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, api_url
from tests.e2e.test_cli_commands import clean_env, flm  # noqa: F401 - the fixture

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def status_with(api: dict[str, Any], key: str) -> int:
    return httpx.post(f"{api_url(api)}/v1/chat/completions", json=CHAT, timeout=10,
                      headers={"Authorization": f"Bearer {key}"}).status_code


def secret_of(out: str) -> str:
    return out.split("\n\n")[1].strip()


def test_keys_create_list_rotate_with_grace_revoke(gateway: Gateway, capsys: Any) -> None:
    api = gateway.create_api()
    name = api["name"]
    ci = secret_of(flm(gateway, capsys, "keys", "create", name, "ci", "--expires", "30d",
                       "--rpm", "600", "--daily-tokens", "100000"))
    assert status_with(api, ci) == 200 and status_with(api, api["key"]) == 200

    listed = flm(gateway, capsys, "keys", "list", name)
    assert "default" in listed and "ci" in listed and ci not in listed, listed
    shown = json.loads(flm(gateway, capsys, "--json", "keys", "show", name, "ci"))
    assert shown["rate_limit_rpm"] == 600 and shown["expires_at"], shown
    assert shown["usage"]["requests_today"] >= 1, shown

    rotated = flm(gateway, capsys, "keys", "rotate", name, "ci", "--grace", "1h")
    new = secret_of(rotated)
    assert "the old secret works until" in rotated, rotated
    assert status_with(api, ci) == 200 and status_with(api, new) == 200  # both, in grace

    flm(gateway, capsys, "keys", "update", name, "ci", "--rpm", "none", "--name", "ci2")
    assert "ci2" in flm(gateway, capsys, "keys", "list", name)
    out = flm(gateway, capsys, "keys", "revoke", name, "ci2")
    assert "no longer works" in out, out
    assert status_with(api, new) == 401 and status_with(api, ci) == 401
    assert status_with(api, api["key"]) == 200  # the other key is untouched
    assert "revoked" in flm(gateway, capsys, "keys", "list", name)


@pytest.mark.parametrize("argv, message", [
    (("keys", "create", "{api}", "default"), "name: another key of this API already has it"),
    (("keys", "show", "{api}", "nope"), "has no key with id or name 'nope'"),
])
def test_keys_errors_are_one_line(gateway: Gateway, capsys: Any, argv: tuple[str, ...],
                                  message: str) -> None:
    api = gateway.create_api()
    err = flm(gateway, capsys, *(a.format(api=api["name"]) for a in argv), code=1)
    assert err.count("\n") == 1 and err.startswith("flm: error:"), err
    assert message in err, err
