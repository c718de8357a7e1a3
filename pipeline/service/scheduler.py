"""Fair step interleaving: one worker thread advances every live request by one decoding step in
turn, so a short answer never waits for a long one to finish, and all model calls stay on one
thread (each request keeps its own KV cache inside its iterator).

A request is an iterator factory; each `next()` is one step. Items travel to the asyncio side
through a per-request queue, so HTTP handlers await chunks without blocking the event loop.
Batching several requests into one forward pass comes later; the contract here stays.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)


@dataclass
class _Job(Generic[T]):
    start: Callable[[], Iterator[T]]
    emit: Callable[[int, Any], None]
    iterator: Iterator[T] | None = None
    cancelled: bool = False

    def step(self) -> T:
        if self.iterator is None:
            self.iterator = self.start()
        return next(self.iterator)

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


@dataclass
class StepScheduler:
    """Round-robin over live requests, one step each; started lazily, stopped by `close()`."""

    name: str = "step-scheduler"
    _inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _closed: bool = field(default=False, init=False)
    _active: int = field(default=0, init=False)

    @property
    def active(self) -> int:
        """Requests admitted and not yet finished."""
        return self._active

    async def stream(self, start: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Run `start()`'s steps on the worker, interleaved with everyone else's; yield items.

        Leaving the loop early (client gone, task cancelled) cancels the request: the worker
        closes its iterator at its next turn instead of decoding for nobody."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        def emit(kind: int, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone, and the request with it
                job.cancelled = True

        job = _Job(start, emit)
        self._submit(job)
        try:
            while True:
                kind, value = await items.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise value
                yield value
        finally:
            job.cancelled = True

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker thread, wait, return its result (or raise its error).

        For the model's set-up: torch's OpenMP gives each thread that computes its own pool of
        workers, and a model that has computed on two threads runs about 40% slower on either
        (measured on 2 cores, docs/perf-notes.md). So load it where its steps will run.
        """
        done: Future[T] = Future()

        def start() -> Iterator[T]:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)
            return iter(())

        self._submit(_Job(start, lambda kind, value: None))
        return done.result()

    def close(self) -> None:
        """Stop the worker; requests still running end with an error."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._inbox.put(None)
        if thread is not None:
            thread.join()

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._active += 1
        self._inbox.put(job)

    def _run(self) -> None:
        live: deque[_Job] = deque()
        current: _Job | None = None
        # Requests that arrived during a step queue up before the one that just stepped.
        while self._admit(live, block=not live and current is None):
            if current is not None:
                live.append(current)
            current = live.popleft()
            if not self._step(current):
                current = None
        for job in [*live, *([current] if current is not None else [])]:
            self._finish(job, _ERROR, RuntimeError(f"{self.name} was closed"))

    def _admit(self, live: deque[_Job], block: bool) -> bool:
        """Move new requests into `live`; False once closed."""
        try:
            job = self._inbox.get(block=block)
            while job is not None:
                live.append(job)
                job = self._inbox.get_nowait()
        except queue.Empty:
            return True
        return False

    def _step(self, job: _Job) -> bool:
        """Advance `job` by one step; True if it goes on."""
        if job.cancelled:
            self._finish(job)
            return False
        try:
            item = job.step()
        except StopIteration:
            self._finish(job, _END, None)
        except Exception as exc:  # the request fails, the worker goes on with the others
            self._finish(job, _ERROR, exc)
        else:
            job.emit(_ITEM, item)
            return True
        return False

    def _finish(self, job: _Job, kind: int | None = None, value: Any = None) -> None:
        """Close `job`, stop counting it, then tell its caller (if `kind`): a caller that sees
        its stream end never sees itself still counted in `active`."""
        job.close()
        with self._lock:
            self._active -= 1
        if kind is not None:
            job.emit(kind, value)
