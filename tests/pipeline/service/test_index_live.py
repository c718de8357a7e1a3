"""Corpus changes reaching the running Serve app, over real HTTP, with the real model and a
real FAISS index (the session's `serve_app`): under 8 concurrent streamed requests, a document
is added (admin route), updated (`lookahead-rag index` on the served directory, no other step)
and deleted (admin route), and each change is in the answers' sources within the documented
delay with no request failing; a bad version is refused while answers go on; a change through
the route and one through the CLI at the same moment both land. Each test leaves the corpus
with the documents it found."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from servehelpers import ADMIN_AUTH, AUTH, WATCH_INTERVAL_S

from pipeline.commands.ask import sse_payloads
from pipeline.commands.cli import main
from retrieval import load_index, versions
from retrieval.store import PASSAGES_FILE

DELAY_S = 30.0  # the documented bound (docs/index-versions.md)
KILN = {
    "id": "kiln-notes",
    "title": "Kiln firing notes",
    "text": "Our studio kiln, named Bertha, fires stoneware to cone 10. After a firing, the "
    "glaze called mossy-quartz must cool inside Bertha for 12 hours before the door opens.",
}
KILN_Q = "How long must the mossy-quartz glaze cool inside the kiln Bertha?"
LOAD_QUESTIONS = ("How do I parse a JSON string?", "What does functools.partial do?")


@pytest.fixture(scope="module")
def admin(url):
    with httpx.Client(base_url=url, headers=ADMIN_AUTH, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def root(serve_app):
    return serve_app[1].retrieval.index_dir


class Load:
    """`n` streamed `/v1/rag` requests at a time, again and again until `stop`; each one's
    status and whether its stream ended well is kept."""

    def __init__(self, url: str, n: int = 8) -> None:
        self.url, self.outcomes, self.halt = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join()

    def _run(self, i: int) -> None:
        body = {"question": LOAD_QUESTIONS[i % 2], "stream": True, "max_tokens": 6}
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=300.0) as c:
            while not self.halt.is_set():
                try:
                    with c.stream("POST", "/v1/rag", json=body) as r:
                        last = list(sse_payloads(r.iter_lines()))[-1]
                        self.outcomes.append((r.status_code, last.get("type", last)))
                except httpx.HTTPError as exc:
                    self.outcomes.append((None, repr(exc)))


def sources(client, question: str) -> tuple[int, list[dict]]:
    response = client.post("/v1/rag", json={"question": question, "max_tokens": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["index_version"], body["sources"]


def within_delay(what: str, since: float, seen: Callable[[], bool]) -> float:
    """Seconds from `since` (a version's publication, `time.monotonic()`) to the start of the
    first request that saw `what`: a request retrieves as it starts, then waits for its answer
    (under load, for a batch row too), which says nothing of the switch."""
    while True:
        asked = time.monotonic()
        if seen():
            return asked - since
        assert asked - since < DELAY_S, f"{what}: not within {DELAY_S} s"
        time.sleep(0.2)


def published(build: dict) -> float:
    """When `build` published its version, on the `time.monotonic()` clock."""
    assert build["status"] == "done", build
    return time.monotonic() - (time.time() - build["finished"])


def kiln_texts(client) -> list[str]:
    return [s["text"] for s in sources(client, KILN_Q)[1] if s["id"].startswith("kiln-notes#")]


def build_of(admin, response) -> dict:
    assert response.status_code == 202, response.text
    build_id = response.json()["build"]["id"]
    deadline = time.monotonic() + 120
    while (build := admin.get(f"/v1/index/builds/{build_id}").json()["build"])["status"] in (
        "queued",
        "building",
    ):
        assert time.monotonic() < deadline, build
        time.sleep(0.1)
    return build


@pytest.mark.load  # opt-in (-m load): a minute of streams; the tests below run every time
def test_changes_reach_the_answers_under_load_and_no_request_fails(
    client, admin, url, root, tmp_path
) -> None:
    documents = admin.get("/v1/index").json()["current"]["documents"]
    with Load(url) as load:
        added = build_of(admin, admin.post("/v1/index/changes", json={"add": [KILN]}))
        within_delay("the added document", published(added), lambda: kiln_texts(client))

        # The CLI, run against the directory the service serves: no other step.
        edited = {**KILN, "text": KILN["text"].replace("12 hours", "20 hours")}
        corpus = tmp_path / "kiln.jsonl"
        corpus.write_text(json.dumps(edited) + "\n")
        assert main(["index", "--out", str(root), "--update", str(corpus), "--quiet"]) == 0
        since = time.monotonic()
        within_delay(
            "the updated document", since, lambda: any("20 hours" in t for t in kiln_texts(client))
        )

        deleted = build_of(admin, admin.post("/v1/index/changes", json={"delete": [KILN["id"]]}))
        within_delay("the deletion", published(deleted), lambda: not kiln_texts(client))
        served = load.outcomes[:]
    assert len(served) >= 8
    assert all(outcome == (200, "end") for outcome in served), served

    status = admin.get("/v1/index").json()
    current = status["current"]
    assert current["documents"] == documents
    assert status["replicas"], status  # each Retriever replica says what it searches
    assert {r["version"] for r in status["replicas"]} == {current["version"]}
    gauges = [
        line.rsplit(" ", 1)[1]
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("lookahead_rag_index_version{replica=")
    ]
    assert gauges == [str(float(current["version"]))] * len(status["replicas"])
    assert sources(client, KILN_Q)[0] == current["version"]


def test_a_bad_version_is_refused_while_answers_go_on(client, admin, root) -> None:
    serving, _ = sources(client, LOAD_QUESTIONS[0])
    # Through the route: a change that would leave the index empty fails its build.
    every = sorted(load_index(root).doc_shas)
    empty = build_of(admin, admin.post("/v1/index/changes", json={"delete": every}))
    assert empty["status"] == "failed"
    assert "refusing to publish an empty index" in empty["error"]
    assert admin.get("/v1/index").json()["last_failed"]["id"] == empty["id"]

    # On disk: a version someone else wrote, corrupt, and the pointer moved to it by hand.
    bad = versions.next_version(root)
    shutil.copytree(versions.version_dir(root, serving), versions.version_dir(root, bad))
    (versions.version_dir(root, bad) / PASSAGES_FILE).write_bytes(b"corrupt")
    try:
        with versions.locked(root):
            versions.set_current(root, bad)
        time.sleep(6 * WATCH_INTERVAL_S)  # every replica has looked at it by now
        for question in LOAD_QUESTIONS:
            version, found = sources(client, question)
            assert (version, bool(found)) == (serving, True)
    finally:
        with versions.locked(root):
            versions.set_current(root, serving)
            versions.discard(root, bad)


def test_a_change_through_the_route_and_one_through_the_cli_at_once_both_land(
    client, admin, root, tmp_path
) -> None:
    before = versions.info(root)
    glaze = {
        "id": "glaze-notes",
        "title": "Glazes",
        "text": "The glaze named ember-fern is fired at cone 6 and turns rust red where it pools.",
    }
    corpus = tmp_path / "glaze.jsonl"
    corpus.write_text(json.dumps(glaze) + "\n")
    cli = threading.Thread(
        target=main, args=(["index", "--out", str(root), "--add", str(corpus), "--quiet"],)
    )
    cli.start()
    routed = build_of(admin, admin.post("/v1/index/changes", json={"add": [KILN]}))
    cli.join()
    assert routed["status"] == "done", routed
    after = versions.info(root)
    assert after.documents == before.documents + 2
    assert after.version == before.version + 2
    assert {"kiln-notes", "glaze-notes"} <= load_index(root).doc_shas.keys()
    since = time.monotonic() - (time.time() - after.created)
    within_delay(
        "both documents",
        since,
        lambda: (
            kiln_texts(client)
            and any(
                s["id"] == "glaze-notes#0"
                for s in sources(client, "What colour is the ember-fern glaze?")[1]
            )
        ),
    )
    cleanup = {"delete": ["kiln-notes", "glaze-notes"]}
    assert build_of(admin, admin.post("/v1/index/changes", json=cleanup))["status"] == "done"
