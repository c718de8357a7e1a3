"""The Generator replica's model thread: one continuous batch (`pipeline.batching.AnswerBatch`),
stepped on one thread, fed from the event loop.

Requests join the batch between steps and leave when done, so a short answer never waits for a
long one, and every model call stays on the thread that loaded the model. Admission is decided
on the event loop at once: with every row taken and `max_queued` requests already waiting, a
request is refused with `QueueFullError` (503 + Retry-After), never left to hang. A request
whose client leaves (or whose task is cancelled) frees its row at the next step; one that fails
fails alone. Events travel back through a per-request asyncio queue.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.service.errors import QueueFullError
from pipeline.wire import Event, Finished, GenerationJob

if TYPE_CHECKING:
    from pipeline.batching import AnswerBatch

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)
_WAKE = object()  # a request was cancelled: look at the batch before blocking again


@dataclass
class _Request:
    job: GenerationJob
    emit: Callable[[int, Any], None]
    cancelled: bool = False


class BatchScheduler:
    """Runs `call`s and the batch's steps on one thread; `stream` is the asyncio side.

    `max_queued`: requests that may wait for a row; `retry_after_s`: what a refused client is
    told to wait."""

    def __init__(
        self, max_queued: int, retry_after_s: float, name: str = "generator-batch"
    ) -> None:
        self.max_queued, self.retry_after_s, self.name = max_queued, retry_after_s, name
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._admitted = 0  # holding a row or waiting for one
        self._batch: AnswerBatch | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        """Requests running or waiting, not yet finished."""
        return self._admitted

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the model thread, wait, return its result (or raise its error).

        For the model's set-up: torch's OpenMP gives each thread that computes its own pool of
        workers, and a model that has computed on two threads runs about 40% slower on either
        (measured on 2 cores, docs/perf-notes.md). So load it where its steps will run.
        """
        done: Future[T] = Future()
        self._put((fn, done))
        return done.result()

    def start(self, make_batch: Callable[[], AnswerBatch]) -> AnswerBatch:
        """Build the batch on the model thread; requests are taken from then on."""
        self._batch = self.call(make_batch)
        return self._batch

    async def stream(self, job: GenerationJob) -> AsyncIterator[Event]:
        """The job's events as its steps produce them. Raises `QueueFullError` at once when the
        replica cannot take it. Leaving the loop early cancels the request at the next step."""
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

        request = _Request(job, emit)
        try:
            self._put(request)
        except RuntimeError:
            self._release()
            raise
        ended = False
        try:
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
                request.cancelled = True
                self._inbox.put(_WAKE)

    def close(self) -> None:
        """Stop the thread; requests still running end with an error."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._inbox.put(None)
        self._thread.join()

    def _put(self, item: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._inbox.put(item)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _run(self) -> None:
        live: dict[int, _Request] = {}  # batch handle -> request
        while True:
            busy = self._batch is not None and self._batch.busy
            items = _drain(self._inbox, block=not busy)
            if None in items:
                break
            for item in items:
                if isinstance(item, _Request):
                    self._admit(item, live)
                elif item is not _WAKE:
                    _call(*item)
            try:
                self._cancel_left(live)
                if self._batch is not None and self._batch.busy:
                    self._step(live)
            except Exception as exc:  # a bug in the loop: fail what runs, keep serving
                for handle in list(live):
                    self._batch.cancel(handle)
                    self._finish(live, handle, _ERROR, exc)
        closed = RuntimeError(f"{self.name} was closed")
        for handle in list(live):
            self._finish(live, handle, _ERROR, closed)
        for item in _drain(self._inbox, block=False):
            if isinstance(item, _Request):
                self._release()
                item.emit(_ERROR, closed)
            elif isinstance(item, tuple):
                item[1].set_exception(closed)

    def _admit(self, request: _Request, live: dict[int, _Request]) -> None:
        assert self._batch is not None
        if request.cancelled:
            self._release()
            return
        try:
            handle, started = self._batch.add(request.job)
        except Exception as exc:  # its prompt cannot fit, ...: it alone fails
            self._release()
            request.emit(_ERROR, exc)
            return
        live[handle] = request
        request.emit(_ITEM, started)

    def _cancel_left(self, live: dict[int, _Request]) -> None:
        for handle, request in list(live.items()):
            if request.cancelled:
                self._batch.cancel(handle)
                self._finish(live, handle)

    def _step(self, live: dict[int, _Request]) -> None:
        for handle, outcome in self._batch.step():
            if isinstance(outcome, Exception):
                self._finish(live, handle, _ERROR, outcome)
                continue
            request = live[handle]
            for event in outcome:
                request.emit(_ITEM, event)
            if isinstance(outcome[-1], Finished):
                self._finish(live, handle, _END)

    def _finish(
        self, live: dict[int, _Request], handle: int, kind: int | None = None, value: Any = None
    ) -> None:
        """Stop counting the request, then tell its caller (if `kind`): a caller that sees its
        stream end never sees itself still counted in `admitted`."""
        request = live.pop(handle)
        self._release()
        if kind is not None:
            request.emit(kind, value)


def _drain(inbox: queue.SimpleQueue, block: bool) -> list[Any]:
    """Everything in `inbox` now; with `block`, at least one item."""
    items = [inbox.get()] if block else []
    while True:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            return items


def _call(fn: Callable[[], Any], done: Future) -> None:
    try:
        done.set_result(fn())
    except BaseException as exc:  # handed to the caller
        done.set_exception(exc)
