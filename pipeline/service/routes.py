"""The HTTP API: `/v1/rag`, the OpenAI-compatible `/v1/chat/completions` and `/v1/completions`
(JSON or server-sent events), `/v1/models`, `/healthz` and `/metrics`, over any `Backend`.

The Serve ingress builds it over deployment handles (`pipeline.service.app`); the HTTP layer's own tests
build it over a stand-in. A generating request first waits for the Generator's `Started` event,
so a request that cannot run (too long, backend down) gets its proper status code before any
byte of a stream is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.config import Config
from pipeline.service.errors import ApiError, install_error_handlers, to_api_error
from pipeline.service.metrics import CONTENT_TYPE, Metrics, Trace
from pipeline.service.schemas import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    GenerationRequest,
    LookaheadStats,
    ModelCard,
    ModelList,
    RagRequest,
    RagResponse,
    Source,
    Usage,
)
from pipeline.wire import Answer, Delta, Event, Finished, GenerationJob, Started

REQUEST_ID = "x-request-id"
_STARTED = int(time.time())  # the `created` of the model card
ENDPOINTS = ("/v1/rag", "/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz")


class Backend(Protocol):
    async def retrieve(self, query: str, k: int) -> Sequence[Any]:
        """The `k` best passages for `query`, best first."""
        ...

    def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        """`Started`, `Delta`s, `Finished`; raises `BackendUnavailableError` when it cannot run."""
        ...

    async def check(self) -> None:
        """Raise `BackendUnavailableError` unless every part answers."""
        ...


def endpoint_label(path: str) -> str:
    """Metric label for a path; unknown paths share one label so scanners cannot blow it up."""
    return path if path in ENDPOINTS or path == "/metrics" else "other"


class RequestContextMiddleware:
    """Give every request an id (the caller's `x-request-id`, or a new one), count it, and cap
    its body size (a 413 in the API's error shape, which FastAPI's own limit does not give).

    Under Ray Serve the proxy already echoes the id on every response, so `echo` is off there
    (two copies of the header would reach the client); standalone, this adds it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, echo: bool, max_body_bytes: int) -> None:
        self.app, self.metrics, self.echo = app, metrics, echo
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get(REQUEST_ID) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["arrived"] = request_id, time.perf_counter()
        endpoint = endpoint_label(scope["path"])
        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
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


def build_api(
    backend: Backend,
    config: Config,
    *,
    echo_request_id: bool = True,
    metrics: Metrics | None = None,
) -> FastAPI:
    metrics = metrics or Metrics()
    model_name = config.model.served_name
    app = FastAPI(
        title="lookahead-rag",
        description="RAG answers decoded with lossless lookahead decoding",
    )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        echo=echo_request_id,
        max_body_bytes=config.limits.max_body_bytes,
    )

    def count_error(request: Request, error: ApiError) -> None:
        label = endpoint_label(request.url.path)
        metrics.errors.labels(label, error.code or error.type).inc()

    install_error_handlers(app, count_error)
    planner = _Planner(backend, config)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        await backend.check()
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=_STARTED)])

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    async def run(request: Request, job: GenerationJob, renderer: Renderer, stream: bool):
        trace = metrics.trace(endpoint_label(request.url.path), request.state.arrived)
        events = _traced(backend.generate(job), trace)
        try:
            started = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        if not isinstance(started, Started):
            raise RuntimeError(f"the generator sent {type(started).__name__} before Started")
        if stream:
            body = _sse(started, events, renderer, lambda e: count_error(request, e))
            return StreamingResponse(body, media_type="text/event-stream")
        answer = Answer()
        answer.add(started)
        try:
            async for event in events:
                answer.add(event)
        finally:
            await events.aclose()
        return renderer.complete(answer)

    @app.post("/v1/rag")
    async def rag(body: RagRequest, request: Request):
        messages = ({"role": "user", "content": body.question},)
        job = await planner.job(body, body.question, messages=messages)
        renderer = RagRenderer(request.state.request_id)
        return await run(request, job, renderer, body.stream)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        planner.check_model(body.model)
        messages = tuple({"role": m.role, "content": m.content} for m in body.messages)
        query = messages[-1]["content"]  # retrieval looks up the last user message
        job = await planner.job(body, query, messages=messages, stop=body.stop_list)
        usage_chunk = bool(body.stream_options and body.stream_options.include_usage)
        renderer = _ChatRenderer(request.state.request_id, model_name, usage_chunk)
        return await run(request, job, renderer, body.stream)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        planner.check_model(body.model)
        job = await planner.job(body, body.prompt, prompt=body.prompt, stop=body.stop_list)
        usage_chunk = bool(body.stream_options and body.stream_options.include_usage)
        renderer = _CompletionRenderer(request.state.request_id, model_name, usage_chunk)
        return await run(request, job, renderer, body.stream)

    return app


class _Planner:
    """Checks a request against the configured limits and turns it into a `GenerationJob`."""

    def __init__(self, backend: Backend, config: Config) -> None:
        self.backend, self.config = backend, config

    def check_model(self, model: str) -> None:
        if model != self.config.model.served_name:
            raise ApiError(
                404,
                f"model {model!r} does not exist; this server serves "
                f"{self.config.model.served_name!r} (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    async def job(
        self,
        body: GenerationRequest,
        query: str,
        *,
        messages: tuple[dict[str, str], ...] = (),
        prompt: str | None = None,
        stop: Sequence[str] = (),
    ) -> GenerationJob:
        limits, config = self.config.limits, self.config
        chars = len(prompt or "") + sum(len(m["content"]) for m in messages)
        if chars > limits.max_input_chars:
            raise ApiError(
                413,
                f"the input is {chars} characters; the limit is {limits.max_input_chars}",
                param="prompt" if prompt is not None else "messages",
                code="input_too_long",
            )
        max_tokens = body.answer_tokens()
        max_tokens = config.generation.max_tokens if max_tokens is None else max_tokens
        _check_range("max_tokens", max_tokens, 1, limits.max_tokens)
        top_k = config.retrieval.top_k if body.top_k is None else body.top_k
        _check_range("top_k", top_k, 1, limits.max_top_k)
        if len(stop) > limits.max_stop:
            raise ApiError(
                400, f"at most {limits.max_stop} stop sequences", param="stop", code="invalid_value"
            )
        k = max(top_k, config.retrieval.seed_k)
        passages = tuple(await self.backend.retrieve(query, k)) if body.rag else ()
        return GenerationJob(
            messages=messages,
            prompt=prompt,
            passages=passages,
            top_k=top_k,
            max_tokens=max_tokens,
            stop=tuple(stop),
            lookahead=body.lookahead and config.generation.lookahead,
            temperature=body.temperature,
            top_p=body.top_p,
            repetition_penalty=body.repetition_penalty,
            seed=body.seed,
        )


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        message = f"{name} must be between {lo} and {hi}, got {value}"
        raise ApiError(400, message, param=name, code="invalid_value")


async def _traced(events: AsyncIterator[Event], trace: Trace) -> AsyncIterator[Event]:
    started: Started | None = None
    try:
        async for event in events:
            if isinstance(event, Started):
                started = event
            elif isinstance(event, Delta):
                trace.on_tokens(event.n_tokens)
            elif started is not None:
                trace.on_finish(started.prompt_tokens, event)
            yield event
    finally:
        await events.aclose()


# ---- rendering -------------------------------------------------------------------------------


def _usage(answer: Answer) -> Usage:
    completion = answer.finished.completion_tokens if answer.finished else 0
    return Usage(
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=completion,
        total_tokens=answer.prompt_tokens + completion,
    )


def _stats(finished: Finished) -> LookaheadStats:
    return LookaheadStats(**finished.summary.as_dict(finished.completion_tokens))


def _sources(started: Started | Answer) -> list[Source]:
    return [Source(**vars(s)) for s in started.sources]


class Renderer(Protocol):
    """Turns events into one endpoint's stream payloads and whole response."""

    def start(self, started: Started) -> list[dict]: ...
    def delta(self, delta: Delta) -> dict | None: ...
    def end(self, answer: Answer) -> list[dict]: ...
    def complete(self, answer: Answer) -> BaseModel: ...


class RagRenderer:
    """`/v1/rag`: events `start` (sources), `delta` (text), `end` (usage, stats)."""

    def __init__(self, request_id: str) -> None:
        self.id = request_id

    def start(self, started: Started) -> list[dict]:
        sources = [s.model_dump() for s in _sources(started)]
        return [{"type": "start", "id": self.id, "sources": sources}]

    def delta(self, delta: Delta) -> dict | None:
        return {"type": "delta", "text": delta.text} if delta.text else None

    def end(self, answer: Answer) -> list[dict]:
        finished = answer.finished
        return [
            {
                "type": "end",
                "finish_reason": finished.finish_reason,
                "usage": _usage(answer).model_dump(),
                "stats": _stats(finished).model_dump(),
            }
        ]

    def complete(self, answer: Answer) -> RagResponse:
        return RagResponse(
            id=self.id,
            answer=answer.text,
            finish_reason=answer.finished.finish_reason,
            sources=_sources(answer),
            usage=_usage(answer),
            stats=_stats(answer.finished),
        )


class _OpenAIRenderer(ABC):
    """Shared by chat and completions: the chunk envelope and the closing usage chunk."""

    object_name = ""
    id_prefix = ""
    response_model: type[ChatCompletion | Completion]

    def __init__(self, request_id: str, model: str, usage_chunk: bool) -> None:
        self.id = f"{self.id_prefix}-{request_id}"
        self.model, self.usage_chunk = model, usage_chunk
        self.created = int(time.time())

    @abstractmethod
    def choice(self, content: str, finish_reason: str | None) -> dict:
        """One entry of `choices` in a streamed chunk."""

    @abstractmethod
    def final_choice(self, answer: Answer) -> ChatChoice | CompletionChoice:
        """The one entry of `choices` in a whole (not streamed) response."""

    def complete(self, answer: Answer) -> ChatCompletion | Completion:
        return self.response_model(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[self.final_choice(answer)],
            usage=_usage(answer),
            sources=_sources(answer),
            lookahead=_stats(answer.finished),
        )

    def chunk(self, choices: list[dict], **extra: Any) -> dict:
        return {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def start(self, started: Started) -> list[dict]:
        sources = [s.model_dump() for s in _sources(started)]
        return [self.chunk([self.choice("", None)], sources=sources)]

    def delta(self, delta: Delta) -> dict | None:
        return self.chunk([self.choice(delta.text, None)]) if delta.text else None

    def end(self, answer: Answer) -> list[dict]:
        finished = answer.finished
        last = self.chunk(
            [self.choice("", finished.finish_reason)], lookahead=_stats(finished).model_dump()
        )
        if not self.usage_chunk:
            return [last]
        return [last, self.chunk([], usage=_usage(answer).model_dump())]


class _ChatRenderer(_OpenAIRenderer):
    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"
    response_model = ChatCompletion

    def choice(self, content: str, finish_reason: str | None) -> dict:
        delta: dict[str, str] = {}
        if content or finish_reason is None:
            delta = {"content": content}
        return {"index": 0, "delta": delta, "finish_reason": finish_reason}

    def start(self, started: Started) -> list[dict]:
        first = super().start(started)
        first[0]["choices"][0]["delta"]["role"] = "assistant"
        return first

    def final_choice(self, answer: Answer) -> ChatChoice:
        return ChatChoice(
            message=ChatChoiceMessage(content=answer.text),
            finish_reason=answer.finished.finish_reason,
        )


class _CompletionRenderer(_OpenAIRenderer):
    object_name = "text_completion"
    id_prefix = "cmpl"
    response_model = Completion

    def choice(self, content: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}

    def final_choice(self, answer: Answer) -> CompletionChoice:
        return CompletionChoice(text=answer.text, finish_reason=answer.finished.finish_reason)


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def payloads(renderer: Renderer, answer: Answer, event: Event) -> list[dict]:
    """The stream payloads `event` makes (none for a step whose text is held back); folds the
    event into `answer`, which the closing payloads summarise."""
    answer.add(event)
    if isinstance(event, Started):
        return renderer.start(event)
    if isinstance(event, Delta):
        payload = renderer.delta(event)
        return [] if payload is None else [payload]
    return renderer.end(answer)


async def _sse(
    started: Started, events: AsyncIterator[Event], renderer: Renderer, on_error
) -> AsyncIterator[str]:
    """Server-sent events, ending in `data: [DONE]`; a failure mid-stream becomes an error event
    (the status line has gone out already)."""
    answer = Answer()
    try:
        for payload in payloads(renderer, answer, started):
            yield _data(payload)
        async for event in events:
            for payload in payloads(renderer, answer, event):
                yield _data(payload)
    except Exception as exc:
        error = to_api_error(exc)
        on_error(error)
        yield _data(json.loads(error.response().body))
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"
