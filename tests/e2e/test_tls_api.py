"""An API beyond loopback serves HTTPS with the settings' certificate (bound on 0.0.0.0,
reached only at 127.0.0.1); without a certificate such an API is refused, naming host."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.certs import self_signed
from tests.e2e.conftest import Gateway


def test_https_beyond_loopback(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    gw = gateway_factory(settings={"tls_cert": str(cert), "tls_key": str(key)})
    api = gw.create_api(host="0.0.0.0")
    assert (api["host"], api["insecure"], api["status"]) == ("0.0.0.0", False, "running")
    auth = {"Authorization": f"Bearer {api['key']}"}
    url = f"https://127.0.0.1:{api['port']}/v1/models"
    response = httpx.get(url, headers=auth, timeout=10,
                         verify=ssl.create_default_context(cafile=str(cert)))
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["id"] == api["model"]
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
        httpx.get(f"http://127.0.0.1:{api['port']}/v1/models", headers=auth, timeout=5)


def test_no_certificate_no_api_beyond_loopback(gateway: Gateway) -> None:
    response = gateway.admin("POST", "/api/apis", {"name": "wide", "model": "llama3.2:1b",
                                                   "host": "0.0.0.0"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("host:")
