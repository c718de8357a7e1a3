"""The current version of an index directory, loaded, switched between searches.

A search takes `snapshot()` once and uses that one `Index` for its query vector and its
passages, so it sees one version whole; a switch is a single reference assignment, made once
the new version is loaded and checked, while searches go on with the old one. `watch` polls the
directory's pointer (a small file) from a thread: whatever published the version (the service's
builder, `lookahead-rag index` from a shell, another cluster node on the same volume), every
process serving the directory switches within the poll interval plus the load time.

A version that cannot be loaded or does not fit (corrupt, another embedder or dimension,
empty) is refused: the one held keeps serving, the refusal is kept with its reason, and that
version's directory is not tried again; the next good version is taken as usual.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from retrieval import versions
from retrieval.embedding import Embedder
from retrieval.errors import IndexFormatError, RetrievalError
from retrieval.index import Index, load_index

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """One version as loaded: what a search works with from start to end."""

    version: int
    index: Index

    @property
    def documents(self) -> int:
        return len(self.index.doc_shas)


class LiveIndex:
    def __init__(
        self,
        root: str | Path,
        embedder: Embedder | str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
    ) -> None:
        self.root = Path(root)
        version, path = versions.resolve(self.root)
        self._loaded = Loaded(version, load_index(path, embedder, device=device, dtype=dtype))
        self.refused: dict[int, str] = {}  # version -> why it was not taken
        # ... and the directory refused: a version written again under its number is new
        self._refused_as: dict[int, tuple[int, int] | None] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> Loaded:
        return self._loaded

    def refresh(self) -> bool:
        """Take the pointer's version if it is new and good; True when switched."""
        with self._refresh_lock:  # one load at a time, whoever calls
            try:
                version = versions.current(self.root)
            except (RetrievalError, OSError) as exc:
                logger.warning("cannot read the index pointer of %s: %s", self.root, exc)
                return False
            held = self._loaded
            seen = _identity(versions.version_dir(self.root, version))
            if version == held.version or self._refused_as.get(version) == seen:
                return False
            try:
                index = self._load(version, held.index.embedder)
            except (RetrievalError, OSError) as exc:
                self.refused[version] = str(exc)
                self._refused_as[version] = seen
                logger.error("refused index version %d of %s: %s", version, self.root, exc)
                return False
            self._loaded = Loaded(version, index)
            logger.info("now serving index version %d of %s", version, self.root)
            return True

    def _load(self, version: int, embedder: Embedder) -> Index:
        index = load_index(self.root, embedder, version=version)  # checksums, embedder, dims
        if not index.passages:
            raise IndexFormatError(f"version {version} holds no passages")
        return index

    def watch(self, interval_s: float) -> LiveIndex:
        """Poll the pointer every `interval_s` seconds on a daemon thread until `close`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, args=(interval_s,), name="index-watch", daemon=True
            )
            self._thread.start()
        return self

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
            except Exception:  # e.g. out of memory mid-load: keep serving, keep watching
                logger.exception("checking %s for a new index version failed", self.root)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns
