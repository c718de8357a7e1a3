"""How events become each endpoint's responses: `/v1/rag` (events `start`, `delta`, `end`), the
OpenAI chat and completions chunk envelopes, whole JSON responses, and server-sent events.

`lookahead-rag ask` prints the same `/v1/rag` payloads in-process, so it renders here too.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any, Protocol

from pydantic import BaseModel

from pipeline.service.errors import ApiError, to_api_error
from pipeline.service.schemas import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletion,
    Completion,
    CompletionChoice,
    PromptTokensDetails,
    RagResponse,
    Usage,
)
from pipeline.wire import Answer, Delta, Event, Finished, Queued, Started


def usage(answer: Answer) -> Usage:
    finished = answer.finished
    completion = finished.completion_tokens if finished else 0
    cached = finished.stats.cached_prompt_tokens if finished else 0
    return Usage(
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=completion,
        total_tokens=answer.prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def _sources(started: Started | Answer) -> list[dict]:
    return [asdict(source) for source in started.sources]


class Renderer(Protocol):
    """Turns events into one endpoint's stream payloads and whole response."""

    def start(self, started: Started) -> list[dict]: ...
    def queued(self, queued: Queued) -> list[dict]: ...
    def delta(self, delta: Delta) -> dict | None: ...
    def end(self, answer: Answer) -> list[dict]: ...
    def complete(self, answer: Answer) -> BaseModel: ...


class RagRenderer:
    """`/v1/rag`: events `start` (sources, and the index version they came from), `queued`
    (only while it waits for a batch row), `delta` (one per decoding step: its text, tokens and
    accepted drafted tokens; a step whose text is held back still has one, text ""), `end`
    (usage, stats)."""

    def __init__(self, request_id: str) -> None:
        self.id = request_id

    def start(self, started: Started) -> list[dict]:
        return [
            {
                "type": "start",
                "id": self.id,
                "sources": _sources(started),
                "index_version": started.index_version,
            }
        ]

    def queued(self, queued: Queued) -> list[dict]:
        return [{"type": "queued", "ahead": queued.ahead, "max_wait_s": queued.max_wait_s}]

    def delta(self, delta: Delta) -> dict:
        return {
            "type": "delta",
            "text": delta.text,
            "tokens": delta.n_tokens,
            "accepted_tokens": delta.n_accepted,
        }

    def end(self, answer: Answer) -> list[dict]:
        finished = answer.finished
        return [
            {
                "type": "end",
                "finish_reason": finished.finish_reason,
                "usage": usage(answer).model_dump(),
                "stats": asdict(finished.stats),
            }
        ]

    def complete(self, answer: Answer) -> RagResponse:
        return RagResponse(
            id=self.id,
            answer=answer.text,
            finish_reason=answer.finished.finish_reason,
            sources=list(answer.sources),
            usage=usage(answer),
            stats=answer.finished.stats,
            index_version=answer.index_version,
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
            usage=usage(answer),
            sources=list(answer.sources),
            lookahead=answer.finished.stats,
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
        return [self.chunk([self.choice("", None)], sources=_sources(started))]

    def queued(self, queued: Queued) -> list[dict]:
        return []  # OpenAI's chunks have no such event: `sse` sends a comment

    def delta(self, delta: Delta) -> dict | None:
        return self.chunk([self.choice(delta.text, None)]) if delta.text else None

    def end(self, answer: Answer) -> list[dict]:
        finished = answer.finished
        last = self.chunk(
            [self.choice("", finished.finish_reason)], lookahead=asdict(finished.stats)
        )
        if not self.usage_chunk:
            return [last]
        return [last, self.chunk([], usage=usage(answer).model_dump())]


class ChatRenderer(_OpenAIRenderer):
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


class CompletionRenderer(_OpenAIRenderer):
    object_name = "text_completion"
    id_prefix = "cmpl"
    response_model = Completion

    def choice(self, content: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}

    def final_choice(self, answer: Answer) -> CompletionChoice:
        return CompletionChoice(text=answer.text, finish_reason=answer.finished.finish_reason)


def payloads(renderer: Renderer, answer: Answer, event: Event) -> list[dict]:
    """The stream payloads `event` makes (none where the renderer skips a step whose text is
    held back, or for `Admitted`); folds the event into `answer`, which the closing payloads
    summarise."""
    answer.add(event)
    if isinstance(event, Started):
        return renderer.start(event)
    if isinstance(event, Queued):
        return renderer.queued(event)
    if isinstance(event, Delta):
        payload = renderer.delta(event)
        return [] if payload is None else [payload]
    return renderer.end(answer) if isinstance(event, Finished) else []


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def sse(
    started: Started | None,
    events: AsyncIterator[Event | None],
    renderer: Renderer,
    on_error: Callable[[ApiError], None],
) -> AsyncIterator[str]:
    """Server-sent events, ending in `data: [DONE]`; a failure mid-stream becomes an error event
    (the status line has gone out already). `started` None: the request is admitted but not
    started yet, and the stream opens with a comment saying so; each None of `events` (a quiet
    spell) becomes a keep-alive comment, as does a `Queued` a renderer has no event for."""
    answer = Answer()
    try:
        if started is None:
            yield ": admitted, waiting to start\n\n"
        else:
            for payload in payloads(renderer, answer, started):
                yield _data(payload)
        async for event in events:
            if event is None:
                yield ": keep-alive\n\n"
                continue
            sent = payloads(renderer, answer, event)
            if isinstance(event, Queued) and not sent:
                yield f": queued, {event.ahead} ahead\n\n"
            for payload in sent:
                yield _data(payload)
    except Exception as exc:
        error = to_api_error(exc)
        on_error(error)
        yield _data(json.loads(error.response().body))
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"
