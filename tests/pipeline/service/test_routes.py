"""The HTTP layer alone, over a stand-in backend: what needs control of the backend (failures,
a dead backend) or no model at all. The real Serve app gets the same bad-request table in
test_app.py."""

import asyncio
import json

import pytest
from servehelpers import (
    BAD_REQUESTS,
    MODEL,
    USER,
    StandIn,
    asgi_client,
    check_error,
    completion,
    small_limits_config,
    sse_payloads,
)

from pipeline.service.routes import build_api


@pytest.fixture
def backend():
    return StandIn()


@pytest.fixture
def client(backend):
    return asgi_client(build_api(backend, small_limits_config()))


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=lambda b: b.id)
def test_bad_requests_get_openai_style_errors(client, backend, bad):
    response = bad.send(client)
    check_error(response, bad)
    assert response.headers["x-request-id"]
    assert backend.jobs == []  # nothing reached the generator


def test_rag_answer_with_sources_usage_and_stats(client, backend):
    response = client.post("/v1/rag", json={"question": "parse json?", "top_k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["answer"] == "Use json.loads."
    assert [s["id"] for s in body["sources"]] == ["p0", "p1"]
    assert body["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert body["stats"]["cached_prompt_tokens"] == 4
    assert body["stats"]["tokens_per_step"] == pytest.approx(5 / 3, abs=1e-3)
    assert body["id"] == response.headers["x-request-id"]
    (job,) = backend.jobs
    assert job.top_k == 2
    assert len(job.passages) == 8  # seed_k: more passages seed the trie than fit the prompt
    assert job.messages == ({"role": "user", "content": "parse json?"},)


def test_retrieval_can_be_turned_off_and_lookahead_too(client, backend):
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "rag": False})
    client.post("/v1/rag", json={"question": "q", "lookahead": False})
    no_rag, plain = backend.jobs
    assert no_rag.passages == ()
    assert plain.lookahead is False
    assert no_rag.prefix_cache is plain.prefix_cache is True


def test_prefix_reuse_can_be_turned_off_per_request_and_usage_says_what_was_cached(client, backend):
    body = {"model": MODEL, "messages": USER, "prefix_cache": False}
    response = client.post("/v1/chat/completions", json=body)
    assert response.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    client.post("/v1/completions", json={"model": MODEL, "prompt": "json", "prefix_cache": False})
    client.post("/v1/rag", json={"question": "q", "prefix_cache": False})
    assert [job.prefix_cache for job in backend.jobs] == [False, False, False]
    refused = client.post("/v1/rag", json={"question": "q", "prefix_cache": "no"})
    assert refused.status_code == 400  # strict: a string is not a bool


def test_sampling_settings_reach_the_generator(client, backend):
    sampled = {"temperature": 0.7, "top_p": 0.9, "seed": 42}
    responses = [
        client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **sampled}),
        client.post("/v1/completions", json={"model": MODEL, "prompt": "json", **sampled}),
        client.post("/v1/rag", json={"question": "q", "repetition_penalty": 1.2, **sampled}),
        client.post("/v1/rag", json={"question": "q"}),
    ]
    assert [r.status_code for r in responses] == [200] * 4
    chat, completion, rag, greedy = backend.jobs
    for job in (chat, completion, rag):
        assert (job.temperature, job.top_p, job.seed) == (0.7, 0.9, 42)
    assert (chat.repetition_penalty, rag.repetition_penalty) == (1.0, 1.2)
    assert rag.top_k == 4  # top_k stays retrieval's
    assert (greedy.temperature, greedy.top_p, greedy.seed) == (0.0, 1.0, None)


def test_the_callers_request_id_comes_back(client):
    response = client.get("/v1/models", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["data"][0]["id"] == MODEL


def test_streamed_rag_events_end_in_done(client):
    response = client.post("/v1/rag", json={"question": "q", "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_payloads(response.text)
    assert events[0]["type"] == "start"
    assert events[0]["sources"][0] == {
        "id": "p0",
        "title": "T0",
        "source": "stdlib",
        "score": 1.0,
        "text": "passage 0",
    }
    # One delta per step, the held-back one too, so the token counts add up.
    deltas = [(e["text"], e["tokens"], e["accepted_tokens"]) for e in events[1:-2]]
    assert deltas == [("Use", 1, 0), ("", 1, 0), (" json.loads.", 3, 2)]
    assert events[-2]["type"] == "end"
    assert events[-2]["usage"]["completion_tokens"] == sum(d[1] for d in deltas) == 5
    assert events[-2]["stats"]["accepted_tokens"] == sum(d[2] for d in deltas)
    assert events[-1] == "[DONE]"


def test_chat_stream_has_role_first_finish_last_and_optional_usage(client):
    body = {"model": MODEL, "messages": USER, "stream": True}
    body["stream_options"] = {"include_usage": True}
    events = sse_payloads(client.post("/v1/chat/completions", json=body).text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Use json.loads."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 12
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


@pytest.mark.parametrize("part", ["retrieve", "start"])
def test_a_backend_that_is_down_gives_503(client, backend, part):
    backend.fail = part
    for stream in (False, True):
        response = client.post("/v1/rag", json={"question": "q", "stream": stream})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "backend_unavailable"
        assert "unavailable" in error["message"]


def test_a_full_generator_gives_503_with_when_to_retry(client, backend):
    backend.fail = "full"
    for path, body in (("/v1/rag", {"question": "q"}), ("/v1/completions", completion())):
        for stream in (False, True):
            response = client.post(path, json={**body, "stream": stream})
            assert response.status_code == 503
            assert response.headers["retry-after"] == "3"  # whole seconds, rounded up
            error = response.json()["error"]
            assert (error["code"], error["type"]) == ("queue_full", "service_unavailable")
            assert "retry in 2.5 s" in error["message"]


def test_healthz_reports_a_dead_backend_as_503(client, backend):
    assert client.get("/healthz").json() == {"status": "ok"}
    backend.fail = "check"
    assert client.get("/healthz").status_code == 503


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event(client, backend):
    backend.fail = "midway"
    response = client.post("/v1/rag", json={"question": "q", "stream": True})
    assert response.status_code == 200  # the status line went out with the first event
    events = sse_payloads(response.text)
    assert events[-2]["error"]["code"] == "backend_unavailable"
    assert events[-1] == "[DONE]"


def test_metrics_count_requests_errors_and_tokens(client, backend):
    client.post("/v1/rag", json={"question": "q"})
    client.post("/v1/rag", json={"question": ""})
    text = client.get("/metrics").text
    assert 'lookahead_rag_requests_total{endpoint="/v1/rag",status="200"} 1.0' in text
    assert 'lookahead_rag_requests_total{endpoint="/v1/rag",status="400"} 1.0' in text
    assert 'lookahead_rag_errors_total{code="invalid_value",endpoint="/v1/rag"} 1.0' in text
    assert "lookahead_rag_completion_tokens_total 5.0" in text
    assert "lookahead_rag_decode_steps_total 3.0" in text
    assert "lookahead_rag_mean_accepted_length 1.666" in text
    assert "lookahead_rag_accepted_tokens" not in text  # counted per replica, as vLLM does
    assert 'lookahead_rag_time_to_first_token_seconds_count{endpoint="/v1/rag"} 1.0' in text


def _sample(text, line_start):
    """The value of the metrics line that starts with `line_start` (0 when there is none)."""
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_bug_is_a_500_in_the_error_shape_counted_by_status(backend):
    backend.fail = "bug"
    app = build_api(backend, small_limits_config())
    client = asgi_client(app, raise_app_exceptions=False)
    response = client.post("/v1/rag", json={"question": "q"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert response.headers["x-request-id"]
    text = client.get("/metrics").text
    assert _sample(text, 'lookahead_rag_requests_total{endpoint="/v1/rag",status="500"}') == 1


@pytest.mark.parametrize(("fail", "stream"), [("died-midway", False), ("died-at-start", True)])
def test_a_request_whose_replica_died_before_the_client_saw_any_of_it_runs_again(
    client, backend, fail, stream
):
    backend.fail = fail
    response = client.post("/v1/rag", json={"question": "q", "stream": stream})
    assert response.status_code == 200
    if stream:
        events = sse_payloads(response.text)
        text = "".join(e["text"] for e in events[:-1] if e["type"] == "delta")
        assert (events[-2]["type"], events[-1]) == ("end", "[DONE]")
    else:
        text = response.json()["answer"]
    assert text == "Use json.loads."
    assert len(backend.jobs) == 2


def test_a_stream_whose_replica_dies_after_it_began_ends_with_the_error_event(client, backend):
    backend.fail = "died-midway"
    events = sse_payloads(client.post("/v1/rag", json={"question": "q", "stream": True}).text)
    assert events[-2]["error"]["code"] == "backend_unavailable"
    assert len(backend.jobs) == 1  # the client had its first tokens: no second run


async def _call(app, body_chunks, *, pause_s=0.0, then="end", path="/v1/rag", events=0):
    """Drive `app` as a server would: the body in `body_chunks`, `pause_s` apart, then the end
    of the body, nothing more ("hang"), or the end and a disconnect once the response began
    and carried `events` server-sent events ("leave"). Returns the status and the body sent
    back."""
    scope = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [(b"content-type", b"application/json")],
    }  # fmt: skip
    incoming = [{"type": "http.request", "body": c, "more_body": True} for c in body_chunks]
    if then != "hang":
        incoming.append({"type": "http.request", "body": b"", "more_body": False})
    began = asyncio.Event()
    sent = []

    async def receive():
        if incoming:
            await asyncio.sleep(pause_s)
            return incoming.pop(0)
        if then == "leave":
            await began.wait()
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # nothing more comes (the body, or the disconnect)

    async def send(message):
        sent.append(message)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        if body.count(b"data: ") >= events:
            began.set()

    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0], body


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_closes_the_connection(backend):
    app = build_api(backend, small_limits_config(**{"limits.body_timeout_s": 0.3}))
    start, body = asyncio.run(_call(app, [b'{"question": '], then="hang"))
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body)["error"]["code"] == "request_timeout"
    # A body sent in pieces that all arrive in time is read as usual.
    start, body = asyncio.run(_call(app, [b'{"question": ', b'"q"}'], pause_s=0.05))
    assert start["status"] == 200, body
    assert backend.jobs[0].messages[0]["content"] == "q"
    text = asgi_client(app).get("/metrics").text
    assert _sample(text, 'lookahead_rag_requests_total{endpoint="/v1/rag",status="408"}') == 1


def test_a_stream_the_client_leaves_is_counted_as_cancelled_with_its_tokens(backend):
    backend.fail = "hang"
    app = build_api(backend, small_limits_config())
    start, _ = asyncio.run(
        _call(app, [b'{"question": "q", "stream": true}'], then="leave", events=3)
    )  # start and two deltas, then nothing more comes: the client leaves
    assert start["status"] == 200
    text = asgi_client(app).get("/metrics").text
    assert _sample(text, 'lookahead_rag_cancelled_requests_total{endpoint="/v1/rag"}') == 1
    assert _sample(text, "lookahead_rag_cancelled_tokens_total") == 2  # two steps of one token
    assert _sample(text, "lookahead_rag_completion_tokens_total") == 0


def test_with_api_keys_only_a_known_bearer_key_gets_in(tmp_path, backend):
    key_file = tmp_path / "keys"
    key_file.write_text("file-key\n\n")
    config = small_limits_config(
        **{"server.api_keys": ["config-key"], "server.api_key_file": str(key_file)}
    )
    client = asgi_client(build_api(backend, config))
    body = {"question": "q"}
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic config-key"},
        {"Authorization": "config-key"},
        {"Authorization": "Bearer "},
    ):
        for response in (client.post("/v1/rag", json=body, headers=headers),
                         client.get("/v1/models", headers=headers)):  # fmt: skip
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert backend.jobs == []
    for key in ("config-key", "file-key"):
        auth = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/rag", json=body, headers=auth).status_code == 200
    assert client.get("/healthz").status_code == 200  # open by default
    text = client.get("/metrics").text  # open too
    assert _sample(text, 'lookahead_rag_requests_total{endpoint="/v1/rag",status="401"}') == 5
    assert _sample(text, 'lookahead_rag_errors_total{code="invalid_api_key",endpoint="/v1/rag"}')
    # The file is read again when it changes: keys rotate without a restart.
    key_file.write_text("new-key\n")
    assert client.get("/v1/models", headers={"Authorization": "Bearer file-key"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer new-key"}).status_code == 200


def test_open_paths_are_configurable_and_a_missing_key_file_fails_at_start(tmp_path, backend):
    config = small_limits_config(**{"server.api_keys": ["k"], "server.open_paths": ["/v1/mod*"]})
    client = asgi_client(build_api(backend, config))
    assert client.get("/v1/models").status_code == 200
    assert client.get("/healthz").status_code == 401
    missing = small_limits_config(**{"server.api_key_file": str(tmp_path / "none")})
    with pytest.raises(FileNotFoundError):
        build_api(backend, missing)


def test_json_numbers_with_no_fraction_are_integers(client, backend):
    """JSON Schema's `integer` takes 16.0; strings stay refused (the table above)."""
    body = {"question": "q", "max_tokens": 3.0, "top_k": 2.0, "seed": 7.0, "temperature": 1}
    assert client.post("/v1/rag", json=body).status_code == 200
    (job,) = backend.jobs
    assert (job.max_tokens, job.top_k, job.seed) == (3, 2, 7)
    assert all(type(v) is int for v in (job.max_tokens, job.top_k, job.seed))


def test_the_openapi_schema_states_the_configured_limits_and_the_errors_answered():
    config = small_limits_config(
        **{"server.api_keys": ["k"], "limits.max_stop": 2, "model.served_name": "m"}
    )
    client = asgi_client(build_api(StandIn(), config))
    spec = client.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()
    assert client.get("/openapi.json").status_code == 401  # not an open path by default
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    for path in ("/v1/rag", "/v1/chat/completions", "/v1/completions"):
        operation = paths[path]["post"]
        expected = {"200", "400", "401", "408", "413", "503"} | (
            {"404"} if "v1/c" in path else set()
        )
        assert set(operation["responses"]) == expected, path
        assert operation["security"] == [{"apiKey": []}]
        assert set(operation["responses"]["200"]["content"]) == {
            "application/json",
            "text/event-stream",
        }
        assert "Retry-After" in operation["responses"]["503"]["headers"]
        error = operation["responses"]["400"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert "security" not in paths["/healthz"]["get"]  # open paths ask for no key
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "503"}
    (metrics_type,) = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics_type.startswith("text/plain")
    rag, chat = schemas["RagRequest"]["properties"], schemas["ChatCompletionRequest"]["properties"]
    limits = config.limits
    assert rag["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 256}
    assert rag["top_k"]["anyOf"][0]["maximum"] == limits.max_top_k
    assert rag["question"]["maxLength"] == limits.max_input_chars
    assert rag["question"]["minLength"] == 1
    assert chat["max_completion_tokens"]["anyOf"][0]["maximum"] == 256
    assert chat["model"]["enum"] == ["m"]
    (array,) = [b for b in chat["stop"]["anyOf"] if b.get("type") == "array"]
    assert array["maxItems"] == 2
    assert "HTTPValidationError" not in schemas
    assert not any("422" in op["responses"] for ops in paths.values() for op in ops.values())


def test_a_queued_stream_is_told_so_and_answers_as_usual(client, backend):
    """Issue 22: a request waiting for a batch row says so (`queued`, or a comment where the
    OpenAI chunks have no such event), then decodes."""
    backend.fail = "queued"
    events = sse_payloads(client.post("/v1/rag", json={"question": "q", "stream": True}).text)
    assert [e if e == "[DONE]" else e["type"] for e in events] == [
        "start", "queued", "delta", "delta", "delta", "end", "[DONE]"]  # fmt: skip
    assert events[1] == {"type": "queued", "ahead": 2, "max_wait_s": 0.5}
    body = {"model": MODEL, "messages": USER, "stream": True}
    text = client.post("/v1/chat/completions", json=body).text
    assert ": queued, 2 ahead\n\n" in text
    chunks = sse_payloads(text)[:-1]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
        "Use json.loads.")  # fmt: skip
    assert client.post("/v1/rag", json={"question": "q"}).json()["answer"] == "Use json.loads."


def test_a_stream_admitted_but_not_started_gets_its_headers_and_keep_alives(backend):
    """Admitted, then nothing for longer than `limits.keepalive_s`: the response begins with
    a comment saying so, keep-alive comments follow until the answer starts."""
    backend.fail = "slow-start"
    backend.SLOW_START_S = 1.0
    app = build_api(backend, small_limits_config(**{"limits.keepalive_s": 0.2}))
    start, body = asyncio.run(_call(app, [b'{"question": "q", "stream": true}']))
    assert start["status"] == 200
    blocks = body.decode().split("\n\n")
    assert blocks[0] == ": admitted, waiting to start"
    assert blocks[1] == ": keep-alive"  # while it still has not started
    first_event = next(i for i, b in enumerate(blocks) if b.startswith("data: "))
    assert json.loads(blocks[first_event][len("data: ") :])["type"] == "start"
    assert blocks[-2:] == ["data: [DONE]", ""]


def test_a_request_that_waits_too_long_for_a_row_gets_a_503_or_an_error_event(client, backend):
    backend.fail = "queue-timeout"
    response = client.post("/v1/rag", json={"question": "q"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("queue_timeout", "service_unavailable")
    events = sse_payloads(client.post("/v1/rag", json={"question": "q", "stream": True}).text)
    assert [e.get("type") for e in events[:2]] == ["start", "queued"]
    assert events[2]["error"]["code"] == "queue_timeout"
    assert events[3:] == ["[DONE]"]
    text = client.get("/metrics").text
    assert _sample(text, 'lookahead_rag_errors_total{code="queue_timeout",endpoint="/v1/rag"}') == 2


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rag", {"question": "q"}, "question"),
        ("/v1/completions", completion(), "prompt"),
        ("/v1/chat/completions", {"model": MODEL, "messages": USER}, "messages"),
    ],
)
def test_a_prompt_that_cannot_fit_names_the_request_field(client, backend, path, body, param):
    backend.fail = "too-long"
    for stream in (False, True):
        response = client.post(path, json={**body, "stream": stream})
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("context_length_exceeded", param)


def test_head_healthz_answers_and_a_404_points_at_the_schema(client):
    assert client.request("HEAD", "/healthz").status_code == 200
    message = client.get("/v2/answer").json()["error"]["message"]
    assert "/docs" not in message
    assert "GET /openapi.json describes them" in message


def test_a_request_no_replica_admits_gets_a_503_within_the_queue_wait(backend):
    """Not even Serve's own queue for a replica may hold a request without bound."""
    backend.fail = "never-admitted"
    client = asgi_client(
        build_api(backend, small_limits_config(**{"limits.max_queue_wait_s": 0.3}))
    )
    for stream in (False, True):
        response = client.post("/v1/rag", json={"question": "q", "stream": stream})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["code"] == "queue_timeout"
        assert "no Generator replica took the request" in error["message"]
