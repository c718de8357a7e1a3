"""The Generator replica's model thread: one continuous batch (`pipeline.batching.AnswerBatch`),
stepped on one thread, fed from the event loop.

Requests join the batch between steps and leave when done, so a short answer never waits for a
long one, and every model call stays on the thread that loaded the model (`ModelThread`).
Admission is decided on the event loop at once: with every row taken and `max_queued` requests
already waiting, a request is refused with `QueueFullError` (503 + Retry-After), never left to
hang; one that passes hears `Admitted` at once. Past that gate a request waits in one place
only, the decoder's queue (whose length the replica's metrics read), is told so (`Queued`), and
leaves it with `QueueTimeoutError` once it has waited `max_wait_s` since its admission without a
row. The model thread runs, in order, each admitted request's `add` and one batch step after
another (each step queues the next while the batch is busy), so requests that arrive during a
step join at the next. A request whose client leaves (or whose task is cancelled) frees its row
at the next step; one that fails fails alone. Events travel back through a per-request asyncio
queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.model_thread import ModelThread
from pipeline.service.errors import QueueFullError, QueueTimeoutError
from pipeline.wire import Admitted, Event, Finished, GenerationJob, Queued

if TYPE_CHECKING:
    from pipeline.batching import AnswerBatch

_ITEM, _END, _ERROR = range(3)


@dataclass
class _Request:
    job: GenerationJob
    emit: Callable[[int, Any], None]
    admitted_at: float  # time.monotonic()
    cancelled: bool = False


class BatchScheduler:
    """Steps the batch on its `thread`; `stream` is the asyncio side.

    `max_queued`: requests that may wait for a row; `retry_after_s`: what a refused client is
    told to wait; `max_wait_s`: how long an admitted request may wait for a row."""

    def __init__(
        self,
        max_queued: int,
        retry_after_s: float,
        max_wait_s: float = float("inf"),
        name: str = "generator-batch",
    ) -> None:
        self.max_queued, self.retry_after_s, self.name = max_queued, retry_after_s, name
        self.max_wait_s = max_wait_s
        self.thread = ModelThread(name)
        self._lock = threading.Lock()
        self._closed = False
        self._admitted = 0  # holding a row or waiting for one
        self._batch: AnswerBatch | None = None
        self._live: dict[int, _Request] = {}  # batch handle -> request (model thread only)
        self._stepping = False  # a step is queued on the thread (model thread only)

    @property
    def admitted(self) -> int:
        """Requests running or waiting, not yet finished."""
        return self._admitted

    def start(self, make_batch: Callable[[], AnswerBatch]) -> AnswerBatch:
        """Build the batch on the model thread (where its steps will run: see `ModelThread`);
        requests are taken from then on."""
        self._batch = self.thread.run(make_batch)
        return self._batch

    async def stream(self, job: GenerationJob) -> AsyncIterator[Event]:
        """`Admitted`, then the job's events as its steps produce them. Raises `QueueFullError`
        at once when the replica cannot take it. Leaving the loop early cancels the request at
        the next step."""
        if self._batch is None:
            raise RuntimeError(f"{self.name} has no batch yet: call start() first")
        capacity = self._batch.max_batch + self.max_queued
        with self._lock:
            if self._admitted >= capacity:
                raise QueueFullError(
                    f"the generator is at capacity: {self._batch.max_batch} requests decoding "
                    f"and {self.max_queued} waiting; retry in {self.retry_after_s:g} s",
                    self.retry_after_s,
                )
            self._admitted += 1
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        def emit(kind: int, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone, and the request with it
                request.cancelled = True

        request = _Request(job, emit, time.monotonic())
        try:
            self._submit(self._admit, request)
        except RuntimeError:
            self._release()
            raise
        ended = False
        try:
            yield Admitted()
            while True:
                kind, value = await items.get()
                if kind == _END:
                    ended = True
                    return
                if kind == _ERROR:
                    ended = True
                    raise value
                yield value
        finally:
            if not ended:
                request.cancelled = True  # the next step (or its `add`) drops it

    def close(self) -> None:
        """Stop the thread; requests still running end with an error."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.thread.run(self._fail_all)
        self.thread.close()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self.thread.submit(fn, *args)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    # Everything below runs on the model thread.

    def _admit(self, request: _Request) -> None:
        if request.cancelled:
            self._release()
            return
        load = self._batch.serving()
        ahead = load.running + load.waiting - self._batch.max_batch  # >= 0: it will wait
        try:
            handle, started = self._batch.add(request.job)
        except Exception as exc:  # its prompt cannot fit, ...: it alone fails
            self._release()
            request.emit(_ERROR, exc)
            return
        self._live[handle] = request
        request.emit(_ITEM, started)
        if ahead >= 0:
            request.emit(_ITEM, Queued(ahead, self.max_wait_s))
        self._queue_step()

    def _queue_step(self) -> None:
        if not self._stepping and not self._closed:
            self._stepping = True
            self.thread.submit(self._step)

    def _step(self) -> None:
        self._stepping = False
        if self._closed:
            return
        try:
            now = time.monotonic()
            for handle, request in list(self._live.items()):
                if request.cancelled:
                    self._batch.cancel(handle)
                    self._finish(handle)
                elif now - request.admitted_at > self.max_wait_s and self._batch.queued(handle):
                    self._batch.cancel(handle)
                    self._finish(handle, _ERROR, self._timed_out(now - request.admitted_at))
            if self._batch.busy:
                self._deliver(self._batch.step())
        except Exception as exc:  # a bug in the loop: fail what runs, keep serving
            for handle in list(self._live):
                self._batch.cancel(handle)
                self._finish(handle, _ERROR, exc)
        if self._batch.busy:
            self._queue_step()

    def _timed_out(self, waited_s: float) -> QueueTimeoutError:
        return QueueTimeoutError(
            f"no batch row came free within limits.max_queue_wait_s ({self.max_wait_s:g} s; "
            f"waited {waited_s:.1f} s): the generator is overloaded; retry in "
            f"{self.retry_after_s:g} s",
            self.retry_after_s,
        )

    def _deliver(self, outcomes: list) -> None:
        for handle, outcome in outcomes:
            if isinstance(outcome, Exception):
                self._finish(handle, _ERROR, outcome)
                continue
            request = self._live[handle]
            for event in outcome:
                request.emit(_ITEM, event)
            if isinstance(outcome[-1], Finished):
                self._finish(handle, _END)

    def _fail_all(self) -> None:
        closed = RuntimeError(f"{self.name} was closed")
        for handle in list(self._live):
            self._batch.cancel(handle)
            self._finish(handle, _ERROR, closed)

    def _finish(self, handle: int, kind: int | None = None, value: Any = None) -> None:
        """Stop counting the request, then tell its caller (if `kind`): a caller that sees its
        stream end never sees itself still counted in `admitted`."""
        request = self._live.pop(handle)
        self._release()
        if kind is not None:
            request.emit(kind, value)
