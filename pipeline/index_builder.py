"""The service's index builder: corpus changes from the admin route, applied one at a time off
the request path, each published as a new index version.

A change is queued and answered at once with its build's id; a worker thread applies queued
changes in order (`retrieval.changes.update_index`, under the index directory's lock, so a
`lookahead-rag index` run from a shell at the same time takes its turn too) and keeps each
build's outcome: the version it published, or the error that refused it (a change that does not
fit, a version that failed its checks), the current version serving on. The Serve app runs it
in its own deployment (`pipeline.service.app.IndexBuilder`); nothing here knows Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retrieval import versions
from retrieval.documents import Changes
from retrieval.errors import RetrievalError

logger = logging.getLogger(__name__)

HISTORY = 50  # builds remembered, newest kept


@dataclass(frozen=True)
class Build:
    """One change as the builder handles it."""

    id: str
    status: Literal["queued", "building", "done", "failed"]
    submitted: float  # Unix times
    add: int  # documents asked for
    update: int
    delete: int
    started: float | None = None
    finished: float | None = None
    version: int | None = None  # published (or, when nothing changed, the one kept current)
    change: dict[str, int] | None = None  # documents added, updated, deleted, unchanged
    error: str | None = None


class IndexBuilder:
    def __init__(self, root: str | Path, keep: int = versions.DEFAULT_KEEP) -> None:
        self.root, self.keep = Path(root), keep
        self._builds: OrderedDict[str, Build] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Changes] | None] = queue.Queue()
        self._embedder = None  # the index's own model, loaded at the first build
        self._worker = threading.Thread(target=self._work, name="index-builder", daemon=True)
        self._worker.start()

    def submit(self, changes: Changes) -> Build:
        """Queue `changes`; its build, queued. A change wrong in itself (an id twice, a
        document without text) raises `ChangeError` here; one that does not fit the index
        fails its build."""
        changes.check()
        build = Build(
            id=uuid.uuid4().hex[:12],
            status="queued",
            submitted=time.time(),
            add=len(changes.add),
            update=len(changes.update),
            delete=len(changes.delete),
        )
        self._record(build)
        self._queue.put((build.id, changes))
        return build

    def build(self, build_id: str) -> Build | None:
        with self._lock:
            return self._builds.get(build_id)

    def status(self) -> dict[str, Any]:
        """The current version, the versions kept and pinned, and the builds remembered."""
        with self._lock:
            builds = list(reversed(self._builds.values()))
        try:
            current: dict[str, Any] | None = versions.info(self.root).model_dump()
        except (RetrievalError, OSError) as exc:
            current = {"error": str(exc)}
        return {
            "index_dir": str(self.root),
            "current": current,
            "versions": versions.listed(self.root),
            "pins": versions.pins(self.root),
            "building": next((b for b in builds if b.status == "building"), None),
            "queued": sum(b.status == "queued" for b in builds),
            "last_failed": next((b for b in builds if b.status == "failed"), None),
            "builds": builds,
        }

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def _record(self, build: Build) -> None:
        with self._lock:
            self._builds[build.id] = build
            while len(self._builds) > HISTORY:
                self._builds.popitem(last=False)

    def _update(self, build_id: str, **fields: Any) -> None:
        with self._lock:
            build = self._builds.get(build_id)
            if build is not None:
                self._builds[build_id] = dataclasses.replace(build, **fields)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            build_id, changes = item
            self._update(build_id, status="building", started=time.time())
            try:
                fields = self._apply(changes)
            except Exception as exc:  # reported on the build; the builder goes on
                if not isinstance(exc, RetrievalError | OSError):
                    logger.exception("index build %s failed", build_id)
                fields = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            self._update(build_id, finished=time.time(), **fields)

    def _apply(self, changes: Changes) -> dict[str, Any]:
        from retrieval.changes import update_index
        from retrieval.embedding import load_embedder

        if self._embedder is None:
            self._embedder = load_embedder(versions.info(self.root).embedder)
        info, applied = update_index(self.root, changes, self._embedder, keep=self.keep)
        change = (applied.change if applied else versions.Change()).model_dump()
        return {"status": "done", "version": info.version, "change": change}
