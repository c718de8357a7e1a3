"""One thread for a model, from loading to every call.

torch's OpenMP gives each thread that computes its own pool of workers, and a model that has
computed on two threads runs ~40% slower on either (measured on 2 cores, docs/perf-notes.md).
Ray Data calls an actor's `__call__` on another thread than its `__init__`, and a Serve replica
answers on its event loop: so everything that holds a model (the Generator's batch, the batch
job's actors, the embedding actors) runs all of its work, loading included, through one of these.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    """Calls run one at a time, in the order they were submitted, on one thread."""

    def __init__(self, name: str = "model") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)`; raises RuntimeError once the thread is closed."""
        return self._pool.submit(fn, *args)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the model's thread; its result, or its error raised here."""
        return self.submit(fn, *args).result()

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        self._pool.shutdown(wait=True)
