"""A generation job as the ingress runs it, over any `Backend`: started, traced for the
metrics, kept alive, run once more if its replica died before the client saw any of it.

A generating request waits for the Generator's `Started`, so a request that cannot run (too
long, backend down, queue full) gets its proper status code before any byte of a stream is sent.
Only a stream whose replica admitted it (`Admitted`) but has not started it within
`limits.keepalive_s` gets its headers first (a client always hears within seconds that it was
admitted); a stream with nothing to send for that long gets a keep-alive (a None here, an SSE
comment on the wire), so neither the client nor a proxy between takes it for dead. A request
whose Generator replica dies before the client has seen any of it runs once more (Serve routes
it to a live replica): a whole response until it is complete, a stream until its headers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pipeline.config import LimitsSection
from pipeline.planning import PlanError
from pipeline.service.errors import QueueTimeoutError, ReplicaDiedError
from pipeline.service.metrics import Metrics, Trace
from pipeline.wire import (
    Admitted,
    Answer,
    ContextTooLongError,
    Delta,
    Event,
    Finished,
    GenerationJob,
    Retrieved,
    Started,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Backend(Protocol):
    async def retrieve(self, query: str, k: int) -> Retrieved:
        """The `k` best passages for `query`, best first, all from one index version."""
        ...

    def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        """`Started`, `Delta`s, `Finished`; raises `BackendUnavailableError` when it cannot run."""
        ...

    async def check(self) -> None:
        """Raise `BackendUnavailableError` unless every part answers."""
        ...


async def once_more_if_the_replica_died(attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`; if the replica running it died, a second time, which Serve sends to a live
    replica. Only for what the client has seen nothing of yet."""
    try:
        return await attempt()
    except ReplicaDiedError as exc:
        logger.warning("%s; running the request again", exc)
        return await attempt()


@dataclass(frozen=True)
class Run:
    """One generation job as the ingress runs it: each attempt is traced for the metrics."""

    backend: Backend
    metrics: Metrics
    limits: LimitsSection
    job: GenerationJob
    endpoint: str
    arrived: float
    text_param: str  # the request field a prompt that cannot fit is blamed on
    index_version: int | None = None  # the index version the job's passages came from

    def _events(self) -> AsyncIterator[Event]:
        trace = self.metrics.trace(self.endpoint, self.arrived)
        events = _heard_within(self.backend.generate(self.job), self.limits)
        return _versioned(_named(_traced(events, trace), self.text_param), self.index_version)

    async def start(self) -> tuple[Started | None, AsyncIterator[Event | None]]:
        """The Generator's `Started` and the events that follow it, with a None each time
        `limits.keepalive_s` passes without one; or None and the events, once the request was
        admitted and that long has passed without `Started`."""
        events = _ticking(self._events(), self.limits.keepalive_s)
        admitted = False
        try:
            async for event in events:
                if isinstance(event, Started):
                    return event, events
                if isinstance(event, Admitted):
                    admitted = True
                elif event is not None:
                    raise RuntimeError(f"the generator sent {type(event).__name__} before Started")
                elif admitted:
                    return None, events
            raise RuntimeError("the generator ended before Started")
        except BaseException:
            await events.aclose()
            raise

    async def whole(self) -> Answer:
        """Every event, folded into the answer."""
        answer = Answer()
        events = self._events()
        try:
            async for event in events:
                answer.add(event)
        finally:
            await events.aclose()
        if answer.finished is None:
            raise RuntimeError("the generator ended before Finished")
        return answer


async def _traced(events: AsyncIterator[Event], trace: Trace) -> AsyncIterator[Event]:
    started: Started | None = None
    finished = False
    try:
        async for event in events:
            if isinstance(event, Started):
                started = event
                trace.on_start(event)
            elif isinstance(event, Delta):
                trace.on_tokens(event.n_tokens)
            elif isinstance(event, Finished) and started is not None:
                trace.on_finish(started.prompt_tokens, event)
                finished = True
            yield event
    except (GeneratorExit, asyncio.CancelledError):  # the client left, or the request was cut
        if not finished:
            trace.on_cancel()
        raise
    finally:
        trace.on_end()
        await events.aclose()


async def _heard_within(
    events: AsyncIterator[Event], limits: LimitsSection
) -> AsyncIterator[Event]:
    """`events`, or `QueueTimeoutError` if the first of them (a Generator replica's `Admitted`)
    does not come within `limits.max_queue_wait_s`: the request waits nowhere without bound,
    not even in Serve's own queue for a replica."""
    try:
        try:
            first = await asyncio.wait_for(anext(events), limits.max_queue_wait_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise QueueTimeoutError(
                "no Generator replica took the request within limits.max_queue_wait_s "
                f"({limits.max_queue_wait_s:g} s): retry in {limits.retry_after_s:g} s",
                limits.retry_after_s,
            ) from None
        yield first
        async for event in events:
            yield event
    finally:
        await events.aclose()


async def _named(events: AsyncIterator[Event], text_param: str) -> AsyncIterator[Event]:
    """`events`, a prompt that cannot fit blamed on the request's own text field."""
    try:
        async for event in events:
            yield event
    except ContextTooLongError as exc:
        raise PlanError(str(exc), text_param, "context_length_exceeded") from exc
    finally:
        await events.aclose()


async def _ticking(events: AsyncIterator[T], every_s: float) -> AsyncIterator[T | None]:
    """`events`, with a None whenever `every_s` passes without one. The event being awaited is
    kept, never cancelled, across a None; closing this closes `events`."""
    pending: asyncio.Task | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # `events` is running inside it: the cancel closes it there
        else:
            if pending is not None and not pending.cancelled():
                pending.exception()  # retrieved: an event nobody will read
            await events.aclose()


async def _versioned(events: AsyncIterator[Event], version: int | None) -> AsyncIterator[Event]:
    """`events`, `Started` saying the index version the sources came from."""
    try:
        async for event in events:
            if isinstance(event, Started):
                event = dataclasses.replace(event, index_version=version)
            yield event
    finally:
        await events.aclose()
