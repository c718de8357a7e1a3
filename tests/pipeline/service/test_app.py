"""The Serve app over real HTTP on loopback: the real model, a real (small) index, one Ray
instance for the whole module (`serve_app`, session-scoped)."""

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest
import redis
import torch
from prometheus_client.parser import text_string_to_metric_families
from servehelpers import (
    API_KEY,
    AUTH,
    BAD_REQUESTS,
    GENERATOR_REPLICAS,
    HEADER_TIMEOUT_S,
    HELD_TOKENS,
    MAX_BATCH,
    MAX_QUEUED,
    MODEL,
    ONE_PATH_QUESTIONS,
    check_error,
    generator_replicas,
    small_limits_config,
    wait_for_generators,
)

from generation.defaults import DEFAULT_MODEL
from pipeline.commands.ask import sse_payloads
from pipeline.commands.cli import main

QUESTION = "How do I parse a JSON string into a Python object?"


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)


def rag(client, **body):
    response = client.post("/v1/rag", json={"question": QUESTION, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_every_port_of_the_service_is_on_loopback(serve_app):
    listening = [
        c.laddr.ip
        for proc in psutil.Process().children(recursive=True)
        for c in _connections(proc)
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening


def _connections(proc):
    try:
        return proc.net_connections(kind="inet")
    except psutil.Error:
        return []


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=lambda b: b.id)
def test_bad_requests_get_openai_style_errors(client, bad):
    response = bad.send(client)
    check_error(response, bad)
    assert len(response.headers.get_list("x-request-id")) == 1


def test_rag_answers_with_sources_usage_and_lookahead_stats(client):
    body = rag(client, top_k=3)
    assert body["answer"].strip()
    assert 1 <= len(body["sources"]) <= 3
    assert any(s["title"].startswith("json") for s in body["sources"])
    assert all(s["id"] and s["score"] > 0 for s in body["sources"])
    usage, stats = body["usage"], body["stats"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= stats["steps"] <= usage["completion_tokens"]
    assert stats["tokens_per_step"] >= 1.0
    assert stats["accepted_tokens"] <= stats["draft_tokens"]


def test_lookahead_answers_exactly_what_plain_decoding_answers(client):
    lookahead = rag(client, max_tokens=32)
    plain = rag(client, max_tokens=32, lookahead=False)
    assert lookahead["answer"] == plain["answer"]
    assert plain["stats"]["draft_tokens"] == 0
    assert plain["stats"]["steps"] == plain["usage"]["completion_tokens"]


def test_ask_in_process_answers_what_the_service_answers(
    client, serve_app, capsys, app_environment
):
    """One request path: `lookahead-rag ask` in-process (its own model, a batch of one) gives the
    service's greedy answers (the batch job's too: tests/pipeline/commands). On one torch thread
    as the replicas, and short: float32 passes of other shapes (the replica's drafts, its batch)
    round differently, which flips a near-tie now and then further into an answer."""
    _, config = serve_app
    app_environment({"LOOKAHEAD_RAG__MODEL__TORCH_THREADS": "1"})
    threads = torch.get_num_threads()  # ask sets torch's threads, in this process
    try:
        for question in ONE_PATH_QUESTIONS:
            served = rag(client, question=question, max_tokens=12)
            index, max_tokens = str(config.retrieval.index_dir), "12"
            capsys.readouterr()
            assert (
                main(["ask", question, "--json", "--index", index, "--max-tokens", max_tokens]) == 0
            )
            asked = json.loads(capsys.readouterr().out)
            assert asked["answer"] == served["answer"]
            assert [s["id"] for s in asked["sources"]] == [s["id"] for s in served["sources"]]
            # the same tokens; how many of the prompt's came from a prefix cache differs (the
            # service has answered before, `ask` starts empty)
            for count in ("prompt_tokens", "completion_tokens", "total_tokens"):
                assert asked["usage"][count] == served["usage"][count]
    finally:
        torch.set_num_threads(threads)


def test_a_temperature_too_small_to_divide_by_answers_as_greedy_decoding(client):
    tiny = rag(client, max_tokens=4, temperature=1e-300, seed=3)  # was a 500: inf logits
    assert tiny["answer"] == rag(client, max_tokens=4)["answer"]


def test_a_stream_arrives_piece_by_piece_and_adds_up_to_the_answer(client):
    """One event per decoding step that released text, in order, adding up to the whole answer
    (no clock involved: how fast they arrive depends on the machine). Out of the caches: asked
    again with them, the answer would be replayed in a pass or two."""
    whole = rag(client)["answer"]
    body = {"question": QUESTION, "stream": True, "prefix_cache": False}
    with client.stream("POST", "/v1/rag", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        payloads = list(sse_payloads(r.iter_lines()))
    kinds = [payload["type"] for payload in payloads]
    assert (kinds[0], kinds[-1], set(kinds[1:-1])) == ("start", "end", {"delta"})
    texts = [payload["text"] for payload in payloads[1:-1]]
    assert all(texts)
    assert 3 <= len(texts) <= payloads[-1]["stats"]["steps"]
    assert "".join(texts) == whole


def test_openai_client_chat(oai, client):
    completion = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=16
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 16
    assert completion.model_extra["sources"]  # retrieval ran on the user message
    # Same retrieval and greedy decoding as /v1/rag: the same answer.
    assert choice.message.content == rag(client, max_tokens=16)["answer"]


def test_openai_client_chat_streaming_matches_the_whole_answer(oai):
    messages = [{"role": "user", "content": "What does functools.lru_cache do?"}]
    whole = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_openai_client_completions_stop_and_no_retrieval(oai):
    plain = oai.completions.create(
        model=MODEL, prompt="import json\n\ndata = json.", max_tokens=12, extra_body={"rag": False}
    )
    assert plain.choices[0].text
    assert plain.model_extra["sources"] == []
    stop = plain.choices[0].text.strip()[:2]
    stopped = oai.completions.create(
        model=MODEL,
        prompt="import json\n\ndata = json.",
        max_tokens=12,
        stop=[stop],
        extra_body={"rag": False},
    )
    assert stop not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"
    streamed = oai.completions.create(
        model=MODEL,
        prompt="import json\n\ndata = json.",
        max_tokens=12,
        stream=True,
        extra_body={"rag": False},
    )
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


def test_openai_client_models_and_errors(oai):
    assert [m.id for m in oai.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=[], max_tokens=4)


QUESTIONS = [
    "How do I parse a JSON string into a Python object?",
    "What does functools.partial return?",
    "How do I run a command with subprocess and capture its output?",
    "How do I join two paths with pathlib?",
    "How do I read a CSV file row by row?",
    "What does itertools.chain do?",
    "How do I write JSON to a file?",
]


def _batch_sizes(client) -> tuple[float, float, float]:
    """Over every replica: decode steps, those that decoded one sequence only, and the
    sequences decoded (summed over steps)."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    samples = [s for f in families for s in f.samples]
    name = "lookahead_rag:iteration_batch_size"
    steps = sum(s.value for s in samples if s.name == name + "_count")
    alone = sum(s.value for s in samples if s.name == name + "_bucket" and s.labels["le"] == "1.0")
    sequences = sum(s.value for s in samples if s.name == name + "_sum")
    return steps, alone, sequences


def test_concurrent_requests_share_forward_passes_and_each_gets_its_plain_answer(client, url):
    """Seven answers decode together (the batch-size histogram shows shared steps), each the
    plain greedy answer it gets alone."""
    plain = [rag(client, question=q, max_tokens=16, lookahead=False)["answer"] for q in QUESTIONS]
    steps_before, alone_before, _ = _batch_sizes(client)

    def ask(question):
        body = {"question": question, "max_tokens": 16, "stream": True}
        with _client(url) as c, c.stream("POST", "/v1/rag", json=body) as response:
            assert response.status_code == 200, response.read()
            payloads = sse_payloads(response.iter_lines())
            return "".join(p["text"] for p in payloads if p.get("type") == "delta")

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = list(pool.map(ask, QUESTIONS))
    assert answers == plain
    steps, alone, _ = _batch_sizes(client)
    assert steps - steps_before > 0
    assert alone - alone_before < steps - steps_before  # some steps decoded several at once


# An answer that goes on counting: plain decoding makes one token per sequence and step.
COUNTING = {
    "model": MODEL,
    "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",
    "rag": False,
    "lookahead": False,
    "max_tokens": HELD_TOKENS,
}


def test_a_short_request_joins_running_batches_and_is_not_held_back(url):
    """Long answers hold rows on both replicas, leaving each a free one: a 2-token request
    joins a running batch between its steps and ends while every long answer still decodes
    (they are HELD_TOKENS steps long; the short one needs a couple once admitted)."""
    held = GENERATOR_REPLICAS * (MAX_BATCH - 2)
    admitted = threading.Barrier(held + 1, timeout=120)
    short_done = threading.Event()
    ended = []

    def hold(_):
        body = {**COUNTING, "stream": True}
        with _client(url) as c, c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200, r.read()
            admitted.wait()
            for line in r.iter_lines():
                if short_done.is_set():
                    return  # and hang up
                if line == "data: [DONE]":
                    ended.append(line)

    with ThreadPoolExecutor(held) as pool:
        holders = [pool.submit(hold, i) for i in range(held)]
        admitted.wait()
        try:
            with _client(url) as c:
                short = c.post("/v1/completions", json={**COUNTING, "max_tokens": 2})
        finally:
            short_done.set()
        for holder in holders:
            holder.result()
    assert short.status_code == 200, short.text
    assert short.json()["usage"]["completion_tokens"] == 2
    assert ended == []  # no long answer had ended


def test_a_full_queue_is_refused_at_once_and_clients_that_leave_free_their_rows(client, url):
    """Two replicas hold MAX_BATCH + MAX_QUEUED requests each: more are refused with 503,
    `queue_full` and Retry-After, at once. Clients that hang up free their rows: a full load
    fits again, and the replicas decoded far fewer steps for them than their whole answers."""
    capacity = GENERATOR_REPLICAS * (MAX_BATCH + MAX_QUEUED)
    before = _batch_sizes(client)
    answered, hang_up = threading.Barrier(capacity + 5, timeout=120), threading.Event()

    def open_stream(_):
        body = {**COUNTING, "stream": True}
        with _client(url) as c, c.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                answered.wait()
                return r.status_code, r.headers.get("retry-after"), r.json()["error"]
            answered.wait()  # admitted: the status comes with the replica's Started
            hang_up.wait(120)
            return 200, None, None

    with ThreadPoolExecutor(capacity + 4) as pool:
        outcomes = pool.map(open_stream, range(capacity + 4))
        answered.wait()  # every request has its answer or its first event
        hang_up.set()
        outcomes = list(outcomes)
    refused = [o for o in outcomes if o[0] != 200]
    assert 4 <= len(refused) < len(outcomes)
    for status, retry_after, error in refused:
        assert (status, retry_after, error["code"]) == (503, "1", "queue_full")
        assert error["type"] == "service_unavailable"
        assert "retry" in error["message"]
    deadline = time.monotonic() + 300
    while not _a_full_load_fits(url, capacity):
        assert time.monotonic() < deadline, "the rows of the clients that left were never freed"
        time.sleep(0.5)
    # Every replica has answered since (a full load reaches both): its figures are current.
    decoded = _batch_sizes(client)[2] - before[2]  # sequence-steps, one token each
    held = len(outcomes) - len(refused)
    assert decoded < held * HELD_TOKENS / 2


def test_streams_that_must_wait_for_a_row_hear_so_at_once(url):
    """Issue 22: admitted streamed requests that wait for a batch row got no byte at all. Now
    each gets its status line and `start`, then a `queued` event, before any row frees."""
    rows = GENERATOR_REPLICAS * MAX_BATCH
    heard, hang_up = threading.Barrier(rows + 3, timeout=240), threading.Event()
    body = {"question": QUESTION, "max_tokens": HELD_TOKENS, "lookahead": False, "stream": True}

    def open_stream(_):
        kinds = []
        with _client(url) as c, c.stream("POST", "/v1/rag", json=body) as r:
            assert r.status_code == 200, r.read()
            for payload in sse_payloads(r.iter_lines()):
                kinds.append(payload.get("type"))
                if kinds[-1] in ("queued", "delta"):
                    break
            heard.wait()  # every stream holds its row or its place until all have heard
            hang_up.wait(240)
        return kinds

    with ThreadPoolExecutor(rows + 2) as pool:
        outcomes = pool.map(open_stream, range(rows + 2))
        heard.wait()
        hang_up.set()
        outcomes = list(outcomes)
    queued = [kinds for kinds in outcomes if kinds[-1] == "queued"]
    assert len(queued) >= 2, outcomes  # two more than the rows: at least two wait
    assert all(kinds == ["start", "queued"] for kinds in queued)  # told before any delta


def _a_full_load_fits(url, n) -> bool:
    def complete(_):
        with _client(url) as c:
            return c.post("/v1/completions", json={**COUNTING, "max_tokens": 4}).status_code

    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(complete, range(n)))
    assert set(statuses) <= {200, 503}, statuses
    return statuses == [200] * n


def _client(url) -> httpx.Client:
    return httpx.Client(base_url=url, headers=AUTH, timeout=httpx.Timeout(10, read=600))


def test_metrics_are_exposed_and_increase(client):
    def value(text, name):
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = client.get("/metrics").text
    rag(client, max_tokens=8)
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    for name in (
        'lookahead_rag_requests_total{endpoint="/v1/rag",status="200"}',
        "lookahead_rag_completion_tokens_total",
        "lookahead_rag_decode_steps_total",
        'lookahead_rag_time_to_first_token_seconds_count{endpoint="/v1/rag"}',
        "lookahead_rag_tokens_per_second_count",
    ):
        assert value(after.text, name) > value(before, name), name
    assert value(after.text, "lookahead_rag_mean_accepted_length") >= 1.0
    assert "lookahead_rag_inter_token_latency_seconds" in after.text
    models = _per_replica(after.text, "lookahead_rag:model_info", ("model", "dtype", "device"))
    assert set(models.values()) == {(DEFAULT_MODEL, "float32", "cpu")}  # as configured


def _per_replica(text, name, labels=()):
    """Each replica's sample of `name`: its value, or with `labels`, those labels' values."""
    return {
        s.labels["replica"]: tuple(s.labels[k] for k in labels) if labels else s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_generator_replicas_learn_each_others_ngrams_through_redis(client, serve_app):
    """Answers of any replica reach Redis and every replica pulls the same top k back, so all
    build the same global trie. The figures come from inside the replicas, through the
    ingress's /metrics."""
    questions = ["What does functools.partial do?", "How do I read a CSV file?",
                 "What does itertools.chain do?", "How do I run a subprocess?"]  # fmt: skip
    with ThreadPoolExecutor(len(questions)) as pool:
        list(pool.map(lambda q: rag(client, question=q, max_tokens=24), questions))
    deadline = time.monotonic() + 60
    while True:
        # Each answer carries its replica's figures as they are now; Serve picks the replica.
        rag(client, question="What is a tuple?", max_tokens=1)
        text = client.get("/metrics").text
        nodes = _per_replica(text, "lookahead_rag_ngram_global_trie_nodes")
        up = _per_replica(text, "lookahead_rag_ngram_store_up")
        if (
            len(nodes) == GENERATOR_REPLICAS
            and len(set(nodes.values())) == 1
            and min(nodes.values())
        ):
            break
        assert time.monotonic() < deadline, f"replicas never converged: {nodes}"
        time.sleep(0.5)
    assert set(up.values()) == {1.0}
    assert sum(_per_replica(text, "lookahead_rag_ngram_store_flushed_total").values()) > 0
    assert sum(_per_replica(text, "lookahead_rag_ngram_store_fallbacks_total").values()) == 0
    _, config = serve_app
    store = redis.Redis.from_url(config.ngrams.redis_url.get_secret_value())
    assert store.keys(), "nothing reached the shared store"


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_without_a_known_key_only_the_open_paths_answer(url, serve_app):
    with httpx.Client(base_url=url, timeout=30) as anonymous:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
            for response in (
                anonymous.post("/v1/rag", json={"question": QUESTION}, headers=headers),
                anonymous.get("/v1/models", headers=headers),
            ):
                assert response.status_code == 401
                error = response.json()["error"]
                assert (error["code"], error["type"]) == (
                    "invalid_api_key",
                    "invalid_request_error",
                )
        assert anonymous.get("/healthz").status_code == 200  # probes and scrapers get in
        assert anonymous.get("/metrics").status_code == 200
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.code == "invalid_api_key"
    # The key file is read again when it changes: a new key gets in without a restart.
    _, config = serve_app
    key_file = config.server.api_key_file
    key_file.write_text(f"{API_KEY}\nsk-rotated\n")
    try:
        assert [
            m.id for m in openai.OpenAI(base_url=f"{url}/v1", api_key="sk-rotated").models.list()
        ] == [MODEL]
    finally:
        key_file.write_text(API_KEY + "\n")


def _http_reply(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head and a Content-Length body) read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _reply_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _reply_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data)


def test_half_sent_bodies_cannot_hold_the_service(url, serve_app):
    """More clients than the ingress admits at once each send a part of a body and then
    nothing: once the body deadline passes they get 408s and their slots free, while they still
    hold their connections open, so a health check and a real request get through."""
    _, config = serve_app
    port = config.server.port
    slow = config.deployments.ingress.max_ongoing_requests + 6
    head = (
        f"POST /v1/rag HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    sockets = []
    try:
        for _ in range(slow):
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
            sock.sendall(head.encode() + b'{"question": "w')
            sockets.append(sock)
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as other:
            assert other.get("/healthz").status_code == 200
            answer = other.post("/v1/rag", json={"question": QUESTION, "max_tokens": 2})
            assert answer.status_code == 200, answer.text
        for sock in sockets:
            reply = _http_reply(sock)
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:300]
            assert b'"code":"request_timeout"' in reply
    finally:
        for sock in sockets:
            sock.close()


def test_serves_own_paths_answer_without_a_key_and_show_only_the_route(url, serve_app):
    """As the README says: Serve's proxy answers these before the app (and its keys)."""
    _, config = serve_app
    assert httpx.get(f"{url}/-/routes").json() == {"/": config.server.app_name}
    health = httpx.get(f"{url}/-/healthz")
    assert (health.status_code, health.text) == (200, "success")


def test_connections_that_never_finish_their_headers_are_closed_with_a_408(url, serve_app):
    """Issue 22: connections that sent part of a header block (or nothing) and stopped were
    held forever. The Serve proxy now gives headers a deadline: each gets a 408 in the API's
    error shape and is closed, while a real request goes through meanwhile."""
    _, config = serve_app
    port = config.server.port
    partial = [b"POST /v1/rag HTTP/1.1\r\nHost: x\r\n", b"GET /healthz HTTP/1.1\r\nHo", b""]
    sockets = []
    try:
        opened = time.monotonic()
        for i in range(30):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(partial[i % len(partial)])
            sockets.append(sock)
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as other:
            assert other.get("/healthz").status_code == 200
        for sock in sockets:
            reply = _http_reply(sock)
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:300]
            error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
            assert (error["code"], error["param"]) == ("request_timeout", None)
            assert error["message"] == (
                f"the request headers did not arrive within {HEADER_TIMEOUT_S:g} s"
            )
            assert sock.recv(1) == b""  # and the proxy closed it
        assert time.monotonic() - opened < HEADER_TIMEOUT_S + 30
    finally:
        for sock in sockets:
            sock.close()


def _errors(client, code):
    """`lookahead_rag_errors_total` of /v1/rag with `code`."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            wanted = {"code": code, "endpoint": "/v1/rag"}
            if sample.name == "lookahead_rag_errors_total" and sample.labels == wanted:
                return sample.value
    return 0.0


def _metric(client, name):
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("endpoint", "/v1/rag") == "/v1/rag":
                return sample.value
    return 0.0


def test_a_client_that_leaves_is_counted_as_cancelled_with_the_tokens_made_for_it(client, url):
    cancelled, tokens = (
        "lookahead_rag_cancelled_requests_total",
        "lookahead_rag_cancelled_tokens_total",
    )
    before = _metric(client, cancelled), _metric(client, tokens)
    body = {"question": QUESTION, "max_tokens": 200, "lookahead": False}
    with client.stream("POST", "/v1/rag", json={**body, "stream": True}) as r:
        for payload in sse_payloads(r.iter_lines()):
            if payload["type"] == "delta":
                break  # and hang up
    with pytest.raises(httpx.ReadTimeout):  # a whole answer the client does not wait for
        httpx.post(f"{url}/v1/rag", json=body, headers=AUTH, timeout=httpx.Timeout(10, read=0.5))
    deadline = time.monotonic() + 120
    while _metric(client, cancelled) < before[0] + 2:
        assert time.monotonic() < deadline, "the requests the clients left were never counted"
        time.sleep(0.5)
    assert before[1] + 1 <= _metric(client, tokens) < before[1] + 400


def test_a_whole_answer_runs_again_when_its_generator_replica_dies(client, serve_app):
    """A non-streamed request buffers its answer in the ingress: when the replica making it
    dies, the client has seen nothing, and the request runs again on the other replica."""
    import ray

    body = {"max_tokens": 96, "lookahead": False}
    expected = rag(client, **body)["answer"]
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(rag, client, **body)
        deadline = time.monotonic() + 60
        busy = None
        while busy is None and not answer.done():
            assert time.monotonic() < deadline, "no Generator replica took the request"
            for replica in generator_replicas().values():
                if ray.get(replica.get_num_ongoing_requests.remote()) > 0:
                    busy = replica
                    break
        assert busy is not None, "the answer finished before a replica could be killed"
        ray.kill(busy)
        assert answer.result(timeout=300)["answer"] == expected
    wait_for_generators(serve_app)


def test_a_stream_whose_generator_process_is_sigkilled_ends_as_the_readme_says(client, serve_app):
    """Issue 22: the OS kills (SIGKILL, as the OOM killer does) the Generator process running a
    stream that has begun: the client gets the text so far (a prefix of the answer), one error
    event `backend_unavailable`, then [DONE]; the error is counted; the other replica answers
    meanwhile, and Serve brings the killed one back."""
    import ray

    body = {"question": QUESTION, "max_tokens": 200, "lookahead": False}
    whole = rag(client, **body)["answer"]
    errors = _errors(client, "backend_unavailable")
    data, killed = [], None
    with client.stream("POST", "/v1/rag", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data.append(line[len("data: ") :])
            if '"type": "delta"' in data[-1] and killed is None:
                for replica in generator_replicas().values():
                    if ray.get(replica.get_num_ongoing_requests.remote()) > 0:
                        killed = ray.get(replica.__ray_call__.remote(lambda _: os.getpid()))
                        os.kill(killed, signal.SIGKILL)
                        break
    assert killed is not None, "no Generator replica was running the stream"
    assert data[-1] == "[DONE]"
    payloads = [json.loads(d) for d in data[:-1]]
    text = "".join(p["text"] for p in payloads if p.get("type") == "delta")
    assert whole.startswith(text)
    assert text != whole  # it was cut short
    error = payloads[-1]["error"]
    assert (error["code"], error["type"]) == ("backend_unavailable", "service_unavailable")
    assert _errors(client, "backend_unavailable") == errors + 1
    other = client.post("/v1/rag", json={"question": QUESTION, "max_tokens": 2})
    assert other.status_code == 200, other.text  # the live replica answers (or reruns it)
    wait_for_generators(serve_app)


def test_a_replica_that_cannot_start_fails_the_deploy_with_its_root_cause(serve_app, tmp_path):
    """Serve itself says only "Failed to update the deployments ['Retriever']"."""
    from ray import serve

    from pipeline.ray_runtime import DeployError, deploy_app
    from pipeline.service.app import Retriever

    broken = tmp_path / "index"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    config = small_limits_config(**{"retrieval.index_dir": str(broken)})
    options = {"max_constructor_retry_count": 1, "ray_actor_options": {"num_cpus": 0}}
    try:
        with pytest.raises(DeployError) as failed:
            deploy_app(Retriever.options(**options).bind(config), "broken", route_prefix=None)
    finally:
        serve.delete("broken")
    assert str(failed.value) == (
        "deploying broken failed: the Retriever deployment failed to start: "
        f"IndexFormatError: {broken / 'manifest.json'} is corrupt: Field required"
    )
