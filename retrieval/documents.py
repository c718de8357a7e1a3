"""The records retrieval passes around: a source `Document`, an indexed `Passage`, and `Changes`
to an index by document id."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.errors import ChangeError


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


@dataclass(frozen=True)
class Changes:
    """Documents to add (new ids) and update (ids indexed already), ids to delete: applied
    together as one new index version (`retrieval.changes`)."""

    add: Sequence[Document] = ()
    update: Sequence[Document] = ()
    delete: Sequence[str] = ()

    def check(self) -> None:
        """Errors of the change itself, before any index is read: nothing to do, an id given
        twice, a document with no text."""
        ids = [d.id for d in (*self.add, *self.update)] + list(self.delete)
        if not ids:
            raise ChangeError("no change: give documents to add or update, or ids to delete")
        ChangeError.refuse([i for i, n in Counter(ids).items() if n > 1], "given more than once")
        blank = [d.id for d in (*self.add, *self.update) if not d.text.strip()]
        ChangeError.refuse(blank, "has no text (delete a document to remove it)")
