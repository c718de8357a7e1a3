"""The OpenAPI schema as the service behaves, so that a client (or a schema-driven fuzzer) that
follows it sends requests that reach generation, and is told every answer it can get.

FastAPI's schema is patched once, from the app's `Config`: the configured limits go into the
request bodies (`max_tokens` and `top_k` ranges, how many stop strings, input length, the
served model name), each route lists the errors it answers in the API's error shape (400, 401,
404, 408, 413, 503) instead of FastAPI's 422 (never sent here: a bad request is a 400), the
whole and streamed (`text/event-stream`) responses and the Prometheus content type of
`/metrics` are described, the API key scheme is stated where keys are asked for, and each
request body carries an example that runs as it is. What a schema cannot say (the last chat
message must come from the user; all messages together must fit `limits.max_input_chars`) is
still refused with a 400 or 413, which the schema lists.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from pipeline.config import Config
from pipeline.service.auth import is_open, keys_required
from pipeline.service.metrics import CONTENT_TYPE
from pipeline.service.schemas import ChatCompletion, Completion, ErrorBody, RagResponse

_ERRORS = {
    400: "the body does not parse, or a field is invalid (`param` names it)",
    401: "no API key, or not a valid one (send `Authorization: Bearer KEY`)",
    404: "no such model (see GET /v1/models)",
    408: "the body did not arrive within limits.body_timeout_s",
    413: "the body or the input is larger than the limits allow",
    503: "a backend is down or restarting, a Generator's wait queue is full (`queue_full`), or "
    "the request waited limits.max_queue_wait_s for a batch row (`queue_timeout`); both of "
    "those with `Retry-After`: retry later",
}
# Headers a generating route's 503 may carry.
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying (with `queue_full`, `queue_timeout`)",
        "schema": {"type": "integer", "minimum": 1},
    }
}
# path -> (request schema, whole response, errors besides 401)
_GENERATING: dict[str, tuple[str, type[BaseModel], tuple[int, ...]]] = {
    "/v1/rag": ("RagRequest", RagResponse, (400, 408, 413, 503)),
    "/v1/chat/completions": ("ChatCompletionRequest", ChatCompletion, (400, 404, 408, 413, 503)),
    "/v1/completions": ("CompletionRequest", Completion, (400, 404, 408, 413, 503)),
}
_OTHER_ERRORS = {"/healthz": (503,)}
_REF = "#/components/schemas/{model}"
_SECURITY = "apiKey"


def install_openapi(app: FastAPI, config: Config) -> None:
    """Serve the patched schema at the app's `openapi_url` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = service_schema(FastAPI.openapi(app), config)
        return app.openapi_schema

    app.openapi = openapi  # FastAPI's documented way to replace the schema


def service_schema(schema: dict[str, Any], config: Config) -> dict[str, Any]:
    """FastAPI's `schema`, patched as the module says (in place; returned)."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    models = [(m, "serialization") for m in (ErrorBody, *(r for _, r, _ in _GENERATING.values()))]
    _, generated = models_json_schema(models, ref_template=_REF)
    for name, definition in generated.get("$defs", {}).items():
        schemas.setdefault(name, definition)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _limit_requests(schemas, config)
    server = config.server
    protected = keys_required(server)
    if protected:
        components["securitySchemes"] = {_SECURITY: {"type": "http", "scheme": "bearer"}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            errors = list(
                _GENERATING[path][2] if path in _GENERATING else _OTHER_ERRORS.get(path, ())
            )
            if protected and not is_open(path, server.open_paths):
                operation["security"] = [{_SECURITY: []}]
                errors.append(401)
            for status in sorted(errors):
                responses[str(status)] = _error_response(status)
            if path in _GENERATING:
                responses["200"]["content"] = _answer_content(_GENERATING[path][1])
    if "/metrics" in schema.get("paths", {}):
        schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"] = {
            CONTENT_TYPE: {"schema": {"type": "string"}}
        }
    return schema


def _error_response(status: int) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}
    response = {"description": _ERRORS[status], "content": content}
    if status == 503:
        response["headers"] = _RETRY_AFTER
    return response


# One server-sent event of a stream (`stream: true`); before OpenAPI 3.2 a stream's `schema`
# describes each event.
_SSE_EVENT = {
    "type": "object",
    "description": "one event: `data` is a JSON payload, or `[DONE]` at the end",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def _answer_content(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}},
        "text/event-stream": {"schema": _SSE_EVENT},
    }


def _limit_requests(schemas: dict[str, Any], config: Config) -> None:
    """The configured limits and examples, into the request bodies' schemas."""
    limits = config.limits
    tokens = {"minimum": 1, "maximum": limits.max_tokens}
    passages = {"minimum": 1, "maximum": limits.max_top_k}
    text = {"maxLength": limits.max_input_chars}
    served = config.model.served_name
    question = "How do I parse a JSON string into a Python object?"
    example_tokens = min(16, limits.max_tokens)
    examples = {
        "RagRequest": {"question": question, "max_tokens": example_tokens},
        "ChatCompletionRequest": {
            "model": served,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": example_tokens,
        },
        "CompletionRequest": {
            "model": served,
            "prompt": "import json\n\ndata = json.",
            "max_tokens": example_tokens,
            "rag": False,
        },
    }
    for name, example in examples.items():
        request = schemas[name]
        properties = request["properties"]
        for field in ("max_tokens", "max_completion_tokens"):
            _constrain(properties.get(field), tokens)
        _constrain(properties.get("top_k"), passages)
        for field in ("question", "prompt"):
            _constrain(properties.get(field), text)
        if "model" in properties:
            properties["model"] = {"type": "string", "enum": [served], "title": "Model"}
        if "stop" in properties:
            _limit_stop(properties["stop"], limits.max_stop)
        request["examples"] = [example]
    _constrain(schemas["ChatMessage"]["properties"]["content"], text)


def _constrain(prop: dict[str, Any] | None, constraints: dict[str, Any]) -> None:
    """Add `constraints` to `prop`, or to each of its branches that is not null."""
    if prop is None:
        return
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("integer", "string"):
            branch.update(constraints)


def _limit_stop(prop: dict[str, Any], max_stop: int) -> None:
    """At most `max_stop` stop strings: a list that long, or one string (when one is allowed)."""
    branches = []
    for branch in prop["anyOf"]:
        if branch.get("type") == "array":
            branch["maxItems"] = max_stop
        if branch.get("type") != "string" or max_stop >= 1:
            branches.append(branch)
    prop["anyOf"] = branches
