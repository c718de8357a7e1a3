"""The admin routes over the HTTP layer alone, with the real IndexBuilder over a copy of a real
index (real FAISS, the real embedder): their own keys, a change queued and built off the
request, failures reported while the current version stays."""

from __future__ import annotations

import shutil
import time

import pytest
from servehelpers import AUTH, StandIn, asgi_client, small_limits_config

from pipeline.index_builder import IndexBuilder
from pipeline.service.routes import build_api
from retrieval import versions

ADMIN = "admin-key-0123456789"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
KILN = {"id": "kiln", "title": "Kilns", "text": "A kiln fires clay into ceramic at 1200 degrees."}


class LocalAdmin:
    """`IndexAdmin` over an IndexBuilder in this process."""

    def __init__(self, builder: IndexBuilder) -> None:
        self.builder = builder

    async def submit(self, changes):
        return self.builder.submit(changes)

    async def build(self, build_id):
        return self.builder.build(build_id)

    async def status(self):
        return self.builder.status()


@pytest.fixture
def builder(small_index_dir, tmp_path):
    builder = IndexBuilder(shutil.copytree(small_index_dir, tmp_path / "idx"), keep=2)
    yield builder
    builder.close()


def _client(builder, **overrides):
    config = small_limits_config(**overrides)
    return asgi_client(build_api(StandIn(), config, admin=LocalAdmin(builder)))


def _finished(client, build_id: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        build = client.get(f"/v1/index/builds/{build_id}", headers=ADMIN_AUTH).json()["build"]
        if build["status"] in ("done", "failed"):
            return build
        assert time.monotonic() < deadline, build
        time.sleep(0.05)


def _code(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["code"]


def test_without_an_admin_key_the_admin_routes_refuse_everyone(builder) -> None:
    client = _client(builder)
    for method, path in (("GET", "/v1/index"), ("POST", "/v1/index/changes")):
        assert _code(client.request(method, path, headers=AUTH, json={}), 403) == "admin_disabled"
    assert client.post("/v1/rag", json={"question": "q"}).status_code == 200  # no answering keys


def test_admin_and_answering_keys_open_only_their_own_routes(builder) -> None:
    answering = AUTH["Authorization"].removeprefix("Bearer ")
    client = _client(builder, **{"server.api_keys": [answering], "server.admin_keys": [ADMIN]})
    assert _code(client.get("/v1/index", headers=AUTH), 401) == "invalid_admin_key"
    assert _code(client.get("/v1/index"), 401) == "invalid_admin_key"
    assert _code(client.post("/v1/rag", json={"question": "q"}, headers=ADMIN_AUTH), 401) == (
        "invalid_api_key"
    )
    assert client.get("/v1/index", headers=ADMIN_AUTH).status_code == 200
    with pytest.raises(ValueError, match="must not also be an answering key"):
        small_limits_config(**{"server.api_keys": [ADMIN], "server.admin_keys": [ADMIN]})


def test_a_change_is_built_off_the_request_and_a_bad_one_fails_alone(builder) -> None:
    client = _client(builder, **{"server.admin_keys": [ADMIN]})
    before = client.get("/v1/index", headers=ADMIN_AUTH).json()["current"]
    accepted = client.post("/v1/index/changes", headers=ADMIN_AUTH, json={"add": [KILN]})
    assert accepted.status_code == 202, accepted.text
    build = accepted.json()["build"]
    assert (build["status"], build["add"], build["version"]) == ("queued", 1, None)
    done = _finished(client, build["id"])
    assert (done["status"], done["version"]) == ("done", before["version"] + 1)
    assert done["change"] == {"added": 1, "updated": 0, "deleted": 0, "unchanged": 0}
    status = client.get("/v1/index", headers=ADMIN_AUTH).json()
    current = status["current"]
    assert (current["version"], current["documents"]) == (done["version"], before["documents"] + 1)
    assert current["chunks"] == before["chunks"] + 1
    assert status["versions"] == versions.listed(builder.root)

    # A change that does not fit fails its build; the version before it stays current.
    unknown = {"update": [{**KILN, "id": "nope"}]}
    failed = _finished(
        client,
        client.post("/v1/index/changes", headers=ADMIN_AUTH, json=unknown).json()["build"]["id"],
    )
    assert failed["status"] == "failed"
    assert "1 document(s) is not indexed: add it: 'nope'" in failed["error"]
    status = client.get("/v1/index", headers=ADMIN_AUTH).json()
    assert status["last_failed"]["id"] == failed["id"]
    assert status["current"]["version"] == done["version"]

    # A change wrong in itself is refused at once.
    twice = {"add": [KILN], "delete": ["kiln"]}
    response = client.post("/v1/index/changes", headers=ADMIN_AUTH, json=twice)
    assert _code(response, 400) == "invalid_change"
    blank = client.post(
        "/v1/index/changes", headers=ADMIN_AUTH, json={"add": [{"id": "x", "text": " "}]}
    )
    assert _code(blank, 400) == "invalid_value"
    assert _code(client.get("/v1/index/builds/nope", headers=ADMIN_AUTH), 404) == "no_build"
