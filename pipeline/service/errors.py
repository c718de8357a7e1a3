"""Every failure the HTTP API reports, as OpenAI-style JSON: `{"error": {message, type, param,
code}}` with the status code a client can act on (4xx: fix the request; 503: retry later)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pipeline.planning import PlanError
from pipeline.service.schemas import error_body
from pipeline.text import printable
from pipeline.wire import ContextTooLongError


class ApiError(Exception):
    """A request the API refuses; raised anywhere below a route and rendered by the handlers."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, type_, param, code)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )
        self.headers = dict(headers or {})  # e.g. `Allow` on a 405

    def response(self) -> JSONResponse:
        # A message or field name may quote the client's text, lone surrogates and all.
        param = None if self.param is None else printable(self.param)
        body = error_body(printable(self.message), self.type, param, self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class BackendUnavailableError(RuntimeError):
    """A retriever or generator cannot be reached (down, restarting, overloaded)."""


class ReplicaDiedError(BackendUnavailableError):
    """The replica running a request died (or became unreachable) while it did: the request
    may run again on another replica."""


class RetryLaterError(BackendUnavailableError):
    """A Generator replica cannot take or keep the request now: 503 with its `code` and a
    `Retry-After` of `retry_after_s`."""

    code = "backend_unavailable"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s)  # both in args: it pickles across Ray
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.args[0]


class QueueFullError(RetryLaterError):
    """A Generator replica has every batch row taken and its wait queue full: the request is
    refused at once rather than queued without bound."""

    code = "queue_full"


class QueueTimeoutError(RetryLaterError):
    """An admitted request waited `limits.max_queue_wait_s` without getting a batch row: it
    leaves the queue rather than wait without bound."""

    code = "queue_timeout"


def to_api_error(exc: Exception) -> ApiError:
    """The API error for any exception a route lets through."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RetryLaterError):
        retry = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        return ApiError(503, str(exc), "service_unavailable", code=exc.code, headers=retry)
    if isinstance(exc, PlanError):
        return ApiError(exc.status, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, ContextTooLongError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, BackendUnavailableError):
        return ApiError(503, str(exc), type_="service_unavailable", code="backend_unavailable")
    return ApiError(500, "internal error; see the server log", type_="server_error")


def _param(loc: tuple) -> str | None:
    """`("body", "messages", 0, "content")` -> `"messages[0].content"`."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem of a request that does not parse or validate, named by its field."""
    errors = exc.errors()
    # A misspelt field also makes the real one "missing": name the misspelling.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind, loc = first["type"], tuple(first["loc"])
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "malformed JSON")
        return ApiError(400, f"request body is not valid JSON: {detail}", code="invalid_json")
    param = _param(loc)
    if kind == "string_unicode":  # pydantic refuses a field *name* that is not Unicode
        return ApiError(400, "a field name is not valid Unicode", param=param, code="invalid_value")
    if param is None or kind == "model_attributes_type":
        return ApiError(
            400,
            "request body must be a JSON object sent with Content-Type: application/json",
            code="invalid_body",
        )
    if kind == "missing":
        return ApiError(400, f"missing required field {param!r}", param=param, code="missing")
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field {param!r}", param=param, code="unknown_field")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"invalid {param!r}: {message}", param=param, code="invalid_value")


_HTTP_CODES = {
    400: "invalid_json",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
}


# What a 404 or 405 points to: the schema (which a key also opens, and curl reads), not /docs.
_ROUTES = (
    "the routes are POST /v1/rag, POST /v1/chat/completions, POST /v1/completions, "
    "GET /v1/models, GET /healthz, GET /metrics; GET /openapi.json describes them"
)


def http_error(request: Request, exc: HTTPException) -> ApiError:
    """Starlette's and FastAPI's own refusals (no route, wrong method, a body that cannot be
    read), and the request context's (408, 413), in the API's shape, headers kept."""
    status, message = exc.status_code, str(exc.detail)
    if status in (404, 405):
        message = f"{request.method} {request.url.path}: {message.lower()}; {_ROUTES}"
    elif status == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        message = f"request body is not valid UTF-8 JSON: {exc.__cause__.reason}"
    elif status == 400:  # FastAPI could not read the body as JSON
        message = "request body could not be read as JSON"
    return ApiError(status, message, code=_HTTP_CODES.get(status), headers=exc.headers)


def install_error_handlers(app: FastAPI, on_error: Callable[[Request, ApiError], None]) -> None:
    """Render every failure as OpenAI-style JSON; `on_error` sees each one (for metrics)."""

    def render(request: Request, error: ApiError) -> JSONResponse:
        on_error(request, error)
        return error.response()

    async def on_known(request: Request, exc: Exception) -> JSONResponse:
        return render(request, to_api_error(exc))

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(request, validation_error(exc))

    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return render(request, http_error(request, exc))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    for known in (ApiError, PlanError, ContextTooLongError, BackendUnavailableError):
        app.add_exception_handler(known, on_known)
    # Anything else is a bug: a 500 in the same shape (Starlette still logs the traceback).
    app.add_exception_handler(Exception, on_known)
