"""A schema-driven fuzzer (schemathesis) over the real Serve app's own `/openapi.json`: every
request it makes from the schema, valid or not, must get a status the schema documents (never a
5xx), with the content type and the body the schema gives for it. The schema's request examples
must reach generation as they are. Bounded: about seventy requests over all the operations
(valid ones generate: fewer of them), the same every run, with small answers."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from servehelpers import AUTH, sse_payloads

MAX_TOKENS = 4  # the fuzzer may ask for up to limits.max_tokens; fewer keep the run short
GENERATING = ("/v1/rag", "/v1/chat/completions", "/v1/completions")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(serve_app):
    url, _ = serve_app
    return schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)


@pytest.mark.parametrize(
    ("mode", "requests"), [(GenerationMode.POSITIVE, 24), (GenerationMode.NEGATIVE, 48)]
)
def test_every_answer_is_one_the_schema_documents(api_schema, mode, requests):
    """Requests the schema allows (positive) and ones it does not (negative), over every
    operation; the same ones every run (`derandomize`), so a failure repeats."""

    @settings(
        max_examples=requests,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=api_schema.as_strategy(generation_mode=mode))
    def call(case):
        body = case.body
        if isinstance(body, dict):
            fields = ("max_tokens", "max_completion_tokens")
            for field in fields:
                if isinstance(body.get(field), int) and body[field] > MAX_TOKENS:
                    body[field] = MAX_TOKENS
            if case.path in GENERATING and not any(field in body for field in fields):
                body["max_tokens"] = MAX_TOKENS  # else the default length, 24 tokens
        case.call_and_validate(headers=AUTH, timeout=120, checks=CHECKS)

    call()


@pytest.mark.parametrize("stream", [False, True])
def test_the_schemas_request_examples_reach_generation(serve_app, stream):
    url, _ = serve_app
    with httpx.Client(base_url=url, headers=AUTH, timeout=httpx.Timeout(10, read=300)) as c:
        openapi = c.get("/openapi.json").json()
        for path in GENERATING:
            body = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            name = body["schema"]["$ref"].rsplit("/", 1)[-1]
            (example,) = openapi["components"]["schemas"][name]["examples"]
            response = c.post(path, json={**example, "stream": stream})
            assert response.status_code == 200, (path, response.text)
            if stream:
                assert sse_payloads(response.text)[-1] == "[DONE]"
                assert "error" not in sse_payloads(response.text)[-2]
            else:
                assert response.json()["usage"]["completion_tokens"] >= 1
