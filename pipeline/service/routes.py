"""The HTTP API: `/v1/rag`, the OpenAI-compatible `/v1/chat/completions` and `/v1/completions`
(JSON or server-sent events), `/v1/models`, `/healthz` and `/metrics`, over any `Backend`; and
the web page at `/` (`pipeline.service.page`).

The Serve ingress builds it over deployment handles (`pipeline.service.app`); the HTTP layer's
own tests build it over a stand-in. A generating request is planned (`pipeline.planning`),
retrieved for, then run (`pipeline.service.runs`: started, traced, kept alive, run once more if
its replica died before the client saw any of it) and rendered (`pipeline.service.rendering`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.config import Config, LimitsSection
from pipeline.planning import JobRequest, plan_job
from pipeline.service.admin import IndexAdmin
from pipeline.service.admin import router as admin_router
from pipeline.service.auth import ApiKeyMiddleware, ApiKeys
from pipeline.service.errors import ApiError, install_error_handlers
from pipeline.service.metrics import CONTENT_TYPE, Metrics
from pipeline.service.openapi import install_openapi
from pipeline.service.page import router as page_router
from pipeline.service.rendering import (
    ChatRenderer,
    CompletionRenderer,
    RagRenderer,
    Renderer,
    sse,
)
from pipeline.service.runs import Backend, Run, once_more_if_the_replica_died
from pipeline.service.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    RagRequest,
)

REQUEST_ID = "x-request-id"
_STARTED = int(time.time())  # the `created` of the model card
ENDPOINTS = (
    "/v1/rag",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/healthz",
    "/v1/index",
    "/v1/index/changes",
)


@dataclass(frozen=True)
class Service:
    """What the routes work with, kept in `app.state.service`."""

    backend: Backend
    config: Config
    metrics: Metrics
    admin: IndexAdmin | None = None  # the admin routes' builder (None: they answer 503)


def endpoint_label(path: str) -> str:
    """Metric label for a path; unknown paths share one label so scanners cannot blow it up."""
    return path if path in ENDPOINTS or path == "/metrics" else "other"


class RequestContextMiddleware:
    """Give every request an id (the caller's `x-request-id`, or a new one), count its response
    by status, and bound its body: in size (a 413 in the API's error shape, which FastAPI's own
    limit does not give) and in time (a 408 once `limits.body_timeout_s` has passed since the
    request arrived without the whole body, so that a slow client frees its slot).

    It is the outermost layer (`Api`), so it counts every response, the 500s that Starlette's
    own error middleware renders included. Under Ray Serve the proxy already echoes the id on
    every response, so `echo` is off there (two copies of the header would reach the client);
    standalone, this adds it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, echo: bool, limits: LimitsSection) -> None:
        self.app, self.metrics, self.echo = app, metrics, echo
        self.max_body_bytes, self.body_timeout_s = limits.max_body_bytes, limits.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get(REQUEST_ID) or uuid.uuid4().hex
        arrived = time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"], state["arrived"] = request_id, arrived
        endpoint = endpoint_label(scope["path"])
        received, body_done = 0, False

        async def receive_capped() -> Message:
            nonlocal received, body_done
            if body_done:  # from now on only a disconnect can come, whenever it does
                return await receive()
            left = arrived + self.body_timeout_s - time.perf_counter()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except asyncio.TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    headers={"Connection": "close"},  # the rest of the body is never read
                ) from None
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > self.max_body_bytes:
                raise HTTPException(413, f"request body exceeds {self.max_body_bytes} bytes")
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self.echo:
                    MutableHeaders(scope=message)[REQUEST_ID] = request_id
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive_capped, send_with_id)


class Api(FastAPI):
    """FastAPI with `RequestContextMiddleware` outermost. Starlette puts its own
    ServerErrorMiddleware outside every middleware added the usual way, and the 500s it renders
    must be counted and carry the request id too."""

    request_context: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        return app if self.request_context is None else self.request_context(app)


router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


def _count_error(request: Request, error: ApiError) -> None:
    label = endpoint_label(request.url.path)
    _service(request).metrics.errors.labels(label, error.code or error.type).inc()


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, str]:
    await _service(request).backend.check()
    return {"status": "ok"}


router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)  # probes


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    name = _service(request).config.model.served_name
    return ModelList(data=[ModelCard(id=name, created=_STARTED)])


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    return Response(_service(request).metrics.exposition(), media_type=CONTENT_TYPE)


@router.post("/v1/rag")
async def rag(body: RagRequest, request: Request):
    job_request = JobRequest.question(body.question, **body.options())
    return await _generate(request, job_request, RagRenderer(request.state.request_id), body.stream)


@router.post("/v1/chat/completions")
async def chat(body: ChatCompletionRequest, request: Request):
    _check_model(request, body.model)
    messages = tuple({"role": m.role, "content": m.content} for m in body.messages)
    job_request = JobRequest(messages=messages, stop=tuple(body.stop_list), **body.options())
    renderer = ChatRenderer(request.state.request_id, body.model, _usage_chunk(body))
    return await _generate(request, job_request, renderer, body.stream)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    _check_model(request, body.model)
    job_request = JobRequest(prompt=body.prompt, stop=tuple(body.stop_list), **body.options())
    renderer = CompletionRenderer(request.state.request_id, body.model, _usage_chunk(body))
    return await _generate(request, job_request, renderer, body.stream)


def build_api(
    backend: Backend,
    config: Config,
    *,
    echo_request_id: bool = True,
    metrics: Metrics | None = None,
    admin: IndexAdmin | None = None,
) -> FastAPI:
    metrics = metrics or Metrics()
    app = Api(
        title="lookahead-rag",
        description="RAG answers decoded with lossless lookahead decoding",
    )
    app.state.service = Service(backend, config, metrics, admin)
    app.request_context = partial(
        RequestContextMiddleware, metrics=metrics, echo=echo_request_id, limits=config.limits
    )
    app.add_middleware(
        ApiKeyMiddleware,
        keys=ApiKeys.from_config(config.server),
        open_paths=config.server.open_paths,
        on_refused=_count_error,
        admin_keys=ApiKeys.admin_from_config(config.server),
    )
    install_error_handlers(app, _count_error)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(page_router)
    install_openapi(app, config)
    return app


def _check_model(request: Request, model: str) -> None:
    served = _service(request).config.model.served_name
    if model != served:
        raise ApiError(
            404,
            f"model {model!r} does not exist; this server serves {served!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )


def _usage_chunk(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _generate(request: Request, job_request: JobRequest, renderer: Renderer, stream: bool):
    """Plan, retrieve, generate; the whole response, or a stream once generation has started."""
    service = _service(request)
    plan = plan_job(job_request, service.config)
    passages, version = (), None
    if plan.retrieve_k:
        retrieved = await service.backend.retrieve(plan.query, plan.retrieve_k)
        service.metrics.index.update(retrieved.index)
        passages, version = retrieved.passages, retrieved.index.version
    run = Run(
        service.backend,
        service.metrics,
        service.config.limits,
        plan.job(passages),
        endpoint_label(request.url.path),
        request.state.arrived,
        job_request.text_param,
        version,
    )
    if not stream:
        return renderer.complete(await once_more_if_the_replica_died(run.whole))
    started, events = await once_more_if_the_replica_died(run.start)
    body = sse(started, events, renderer, lambda error: _count_error(request, error))
    return StreamingResponse(body, media_type="text/event-stream")
