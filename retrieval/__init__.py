"""Corpus ingestion, embeddings and FAISS indexes: from documents to the top-k passages.

    from retrieval import build_index, load_index, read_corpus
    index = build_index(read_corpus("stdlib"), out="idx")      # or load_index("idx")
    for p in index.search("how do I parse JSON?", k=5):
        print(p.score, p.title, p.source, p.text)
    update_index("idx", Changes(add=[Document("new", "...")]))  # the next version of "idx"

Names are imported on first use: `import retrieval` stays cheap (sentence-transformers takes
seconds to import), and the stdlib extractor's child process never pays for the encoder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Document": "retrieval.documents",
    "Passage": "retrieval.documents",
    "Changes": "retrieval.documents",
    "RetrievalError": "retrieval.errors",
    "CorpusError": "retrieval.errors",
    "EmbedderLoadError": "retrieval.errors",
    "IndexFormatError": "retrieval.errors",
    "ChangeError": "retrieval.errors",
    "STDLIB": "retrieval.corpus",
    "read_corpus": "retrieval.corpus",
    "stdlib_documents": "retrieval.stdlib_docs",
    "chunk_documents": "retrieval.chunking",
    "DEFAULT_EMBEDDER": "retrieval.embedding",
    "Embedder": "retrieval.embedding",
    "load_embedder": "retrieval.embedding",
    "BuildConfig": "retrieval.index",
    "Index": "retrieval.index",
    "build_index": "retrieval.index",
    "load_index": "retrieval.index",
    "check_index_dir": "retrieval.store",
    "update_index": "retrieval.changes",
    "LiveIndex": "retrieval.live",
}

__all__ = [
    "DEFAULT_EMBEDDER",
    "STDLIB",
    "BuildConfig",
    "ChangeError",
    "Changes",
    "CorpusError",
    "Document",
    "Embedder",
    "EmbedderLoadError",
    "Index",
    "IndexFormatError",
    "LiveIndex",
    "Passage",
    "RetrievalError",
    "build_index",
    "check_index_dir",
    "chunk_documents",
    "load_embedder",
    "load_index",
    "read_corpus",
    "stdlib_documents",
    "update_index",
]

if TYPE_CHECKING:
    from retrieval.changes import update_index
    from retrieval.chunking import chunk_documents
    from retrieval.corpus import STDLIB, read_corpus
    from retrieval.documents import Changes, Document, Passage
    from retrieval.embedding import DEFAULT_EMBEDDER, Embedder, load_embedder
    from retrieval.errors import (
        ChangeError,
        CorpusError,
        EmbedderLoadError,
        IndexFormatError,
        RetrievalError,
    )
    from retrieval.index import BuildConfig, Index, build_index, load_index
    from retrieval.live import LiveIndex
    from retrieval.stdlib_docs import stdlib_documents
    from retrieval.store import check_index_dir


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
