"""The HTTP layer alone, over a stand-in backend: what needs control of the backend (failures,
a dead backend) or no model at all. The real Serve app gets the same bad-request table in
test_app.py."""

import pytest
from servehelpers import (
    BAD_REQUESTS,
    MODEL,
    USER,
    StandIn,
    asgi_client,
    check_error,
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
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
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


@pytest.mark.parametrize("part", ["retrieve", "start"])
def test_a_backend_that_is_down_gives_503(client, backend, part):
    backend.fail = part
    for stream in (False, True):
        response = client.post("/v1/rag", json={"question": "q", "stream": stream})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "backend_unavailable"
        assert "unavailable" in error["message"]


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
    assert "lookahead_rag_accepted_tokens_total 2.0" in text
    assert "lookahead_rag_mean_accepted_length 1.666" in text
    assert 'lookahead_rag_time_to_first_token_seconds_count{endpoint="/v1/rag"} 1.0' in text
