"""One thread for an actor's model, from loading to every call.

Ray Data calls an actor's `__call__` on another thread than its `__init__`, and a torch model
that has computed on two threads runs ~40% slower on either: each thread gets its own OpenMP
pool (docs/perf-notes.md). Actors that hold a model run all of its work through this.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the model's thread; its result, or its error raised here."""
        return self._thread.submit(fn, *args).result()
