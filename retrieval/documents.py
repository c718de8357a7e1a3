"""The two records retrieval passes around: a source `Document` and an indexed `Passage`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Document:
    """One source document as ingested; `id` is stable across runs (path, given id or name)."""

    id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        """Content hash: lets an incremental add tell an unchanged document from an edited one."""
        return hashlib.sha256(f"{self.title}\x00{self.text}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk of a document as stored in an index; `start`/`end` are character offsets into
    the document's text (for citations), `score` is set on search results only."""

    id: str
    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    start: int = 0
    end: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields a search result reports (the CLI's `--json` rows, the service's replies)."""
        return {
            "id": self.id,
            "score": self.score,
            "title": self.title,
            "source": self.source,
            "text": self.text,
            "doc_id": self.doc_id,
            "start": self.start,
            "end": self.end,
            "metadata": self.metadata,
        }
