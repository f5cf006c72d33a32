"""Model discovery on an API port with the real clients: ``ollama.Client().list()`` and
``show()``, ``/api/version``, and the ``openai`` client's ``models.retrieve``."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import ollama
import openai
import pytest

from tests.e2e.conftest import Gateway, api_url
from tests.fakes.backend import FakeProcess


def test_ollama_client_discovers_the_api_model(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    client = ollama.Client(host=api_url(api), headers={"Authorization": f"Bearer {api['key']}"},
                           timeout=10)
    listed = client.list()
    assert [m.model for m in listed.models] == [api["model"]]  # the backend lists three
    assert listed.models[0].details is not None and listed.models[0].details.family == "llama"

    shown = client.show(listed.models[0].model)
    assert shown.modelfile and shown.details is not None and shown.details.family == "llama"
    assert fake.stats()["last_by_path"]["/api/show"]["json"]["model"] == api["model"]
    with pytest.raises(ollama.ResponseError) as refused:
        client.show("qwen2.5:0.5b")  # the backend has it, but this API does not serve it
    assert refused.value.status_code == 404

    version = httpx.get(api_url(api) + "/api/version", timeout=5,
                        headers={"Authorization": f"Bearer {api['key']}"})
    assert (version.status_code, version.json()) == (200, {"version": "0.6.0"})
    assert httpx.get(api_url(api) + "/api/tags", timeout=5).status_code == 401


def test_openai_client_retrieves_the_api_model(gateway: Gateway, fake: FakeProcess) -> None:
    api = gateway.create_api()
    client = openai.OpenAI(base_url=f"{api_url(api)}/v1", api_key=api["key"], max_retries=0,
                           timeout=10)
    assert client.models.retrieve(api["model"]).id == api["model"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_openai_backend_has_no_ollama_discovery(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(args=("--backend-kind", "openai"))
    api = gw.create_api()
    auth = {"Authorization": f"Bearer {api['key']}"}
    for method, path in (("GET", "/api/tags"), ("GET", "/api/version"), ("POST", "/api/show")):
        response = httpx.request(method, api_url(api) + path, json={}, headers=auth, timeout=5)
        assert response.status_code == 404, (path, response.text)
    response = httpx.get(f"{api_url(api)}/v1/models/{api['model']}", headers=auth, timeout=5)
    assert (response.status_code, response.json()["id"]) == (200, api["model"])
