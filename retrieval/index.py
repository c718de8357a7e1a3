"""The retriever: documents in, passages with scores out.

`build_index` chunks, embeds and indexes documents; `load_index` reopens a saved index with the
embedder it was built with; `Index.search` answers one query or a batch. Query embedding and
vector search are also separate steps (`embed_queries`, `search_vectors`), so a service can
batch the encoder across requests. An `Index` is never changed once built: a change makes a new
one (`retrieval.changes`), so searches run concurrently with anything. `publish` writes one as
the next version of an index directory (`retrieval.versions`).

The embedding step of a build or a change is pluggable (`EmbedPassages`): by default the
embedder embeds in this process; `pipeline` passes one that fans the texts out to Ray actors
(`lookahead-rag index --distributed`). Chunking, the index choice, training and the store stay
here, so both ways build the same index.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import faiss
import numpy as np

from retrieval import faiss_index, store, versions
from retrieval.chunking import check_chunking, chunk_documents
from retrieval.corpus import check_unique_ids
from retrieval.documents import Document, Passage
from retrieval.embedding import DEFAULT_EMBEDDER, Embedder, embedder_name, load_embedder
from retrieval.errors import CorpusError, IndexFormatError, RetrievalError
from retrieval.store import IndexSettings

# Passage texts -> their unit vectors `[len(texts), dim]`, float32, in order.
EmbedPassages = Callable[[Sequence[str]], np.ndarray]


@dataclass
class BuildConfig:
    """How to turn documents into an index."""

    index_type: str = "auto"  # auto | flat | hnsw | ivfpq | a FAISS factory string
    search_params: str | None = None  # e.g. "efSearch=256"; None: the type's default
    chunk_tokens: int = 128
    chunk_overlap: int = 32
    batch_size: int = 32
    progress: bool = False


@dataclass
class Index:
    """A FAISS index, its passages (row i of the index is `passages[i]`) and the embedder."""

    vector_index: faiss.Index
    passages: list[Passage]
    embedder: Embedder
    settings: IndexSettings
    doc_shas: dict[str, str]  # doc id -> content hash, to tell re-adds from edits

    def __len__(self) -> int:
        return len(self.passages)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Unit query vectors `[len(queries), dim]` for `search_vectors`."""
        return self.embedder.embed_queries(queries)

    def search(self, query: str | Sequence[str], k: int = 5) -> list[Passage] | list[list[Passage]]:
        """The `k` best passages for one query, or a list of such lists for a list of queries
        (embedded and searched as one batch). Any `k` works; at most `len(self)` come back."""
        if isinstance(query, str):
            return self.search_vectors(self.embed_queries([query]), k)[0]
        return self.search_vectors(self.embed_queries(query), k)

    def search_vectors(self, vectors: np.ndarray, k: int = 5) -> list[list[Passage]]:
        """The `k` best passages for each row of `vectors`, best first, `score` set (cosine)."""
        if len(vectors) == 0:
            return []
        scores, rows = faiss_index.search(self.vector_index, vectors, k)
        return [
            [
                dataclasses.replace(self.passages[r], score=float(s))
                for s, r in zip(row_scores, row_ids, strict=True)
                if r >= 0
            ]
            for row_scores, row_ids in zip(scores, rows, strict=True)
        ]

    def save(self, path: str | Path) -> Path:
        """Write one unversioned index directory atomically (see `retrieval.store`); `publish`
        writes a version instead."""
        store.write_index_dir(path, self.stored())
        return Path(path)

    def stored(self) -> store.StoredIndex:
        return store.StoredIndex(self.settings, self.vector_index, self.passages, self.doc_shas)


def build_index(
    documents: Iterable[Document],
    embedder: Embedder | str = DEFAULT_EMBEDDER,
    config: BuildConfig | None = None,
    out: str | Path | None = None,
    embed: EmbedPassages | None = None,
    keep: int = versions.DEFAULT_KEEP,
) -> Index:
    """Chunk, embed and index `documents`; published as the next version of the index directory
    `out` when given (`publish`, keeping `keep` old versions). `embed` must use `embedder`'s
    model (whose tokenizer chunks); by default `embedder` embeds here."""
    config = config or BuildConfig()
    embedder = load_embedder(embedder) if isinstance(embedder, str) else embedder
    check_chunking(config.chunk_tokens, config.chunk_overlap, embedder.max_tokens)
    docs = [d for d in documents if d.text.strip()]
    if not docs:
        raise CorpusError("empty corpus: no document has any text to index")
    check_unique_ids(docs)
    passages = chunk_documents(docs, embedder.tokenizer, config.chunk_tokens, config.chunk_overlap)
    spec = faiss_index.choose_index(config.index_type, len(passages), embedder.dim)
    if config.search_params is not None:
        spec = dataclasses.replace(spec, search_params=config.search_params)
    vector_index = faiss_index.new_index(spec, embedder.dim)  # bad types fail before embedding
    embed = embed or partial(
        embedder.embed_passages, batch_size=config.batch_size, progress=config.progress
    )
    faiss_index.add_vectors(vector_index, embed_passages(passages, embed, embedder.dim))
    settings = IndexSettings(
        embedder=embedder.name,
        index_type=spec.factory,
        search_params=spec.search_params,
        chunk_tokens=config.chunk_tokens,
        chunk_overlap=config.chunk_overlap,
    )
    index = Index(
        vector_index=vector_index,
        passages=passages,
        embedder=embedder,
        settings=settings,
        doc_shas={d.id: d.sha for d in docs},
    )
    if out is not None:
        with versions.locked(out):
            versions.convert_unversioned(out)
            publish(index, out, versions.Change(added=len(index.doc_shas)), keep)
    return index


def publish(
    index: Index, root: str | Path, change: versions.Change, keep: int = versions.DEFAULT_KEEP
) -> versions.VersionInfo:
    """Write `index` as the next version of `root` and make it current, only once it is whole
    and fits: it loads back with its checksums, counts and dimension right, holds passages, and
    has the current version's embedder and dimension (a service searching `root` could not use
    another's). Old versions are pruned to `keep`. The caller holds `versions.locked(root)`."""
    if not index.passages:
        raise IndexFormatError(f"refusing to publish an empty index to {root}: no passages left")
    dim = index.vector_index.d
    parent = versions.info(root) if versions.current(root) else None
    if parent is not None and (parent.embedder, parent.dim) != (index.settings.embedder, dim):
        raise IndexFormatError(
            f"refusing to publish to {root}: its versions use embedder {parent.embedder!r} "
            f"({parent.dim} dims), this index {index.settings.embedder!r} ({dim} dims). Build "
            "an index of another embedder into a new directory and point the service at it."
        )
    version = versions.VersionInfo(
        version=versions.next_version(root),
        parent=None if parent is None else parent.version,
        created=time.time(),
        documents=len(index.doc_shas),
        chunks=len(index.passages),
        embedder=index.settings.embedder,
        dim=dim,
        change=change,
    )
    path = versions.write(root, index.stored(), version)
    try:
        load_index(path, index.embedder)  # what every replica will do: it must pass here
    except RetrievalError:
        versions.discard(root, version.version)
        raise
    versions.set_current(root, version.version)
    versions.prune(root, keep)
    return version


def load_index(
    path: str | Path,
    embedder: Embedder | str | None = None,
    verify: bool = True,
    device: str = "cpu",
    dtype: str = "auto",
    version: int | None = None,
) -> Index:
    """Reopen a saved index: `version` of an index directory (default: its current one), or a
    single version's directory. With no `embedder` the one named in the manifest is loaded (on
    `device`, in `dtype`); a given one must be that same model, since another model's query
    vectors would be meaningless against these passages. `verify=False` skips checksums."""
    path = versions.resolve(path, version)[1]
    stored = store.read_index_dir(path, verify=verify)
    settings = stored.settings
    if embedder is None:
        embedder = settings.embedder
    name = embedder_name(embedder) if isinstance(embedder, str) else embedder.name
    if name != settings.embedder:
        raise IndexFormatError(
            f"{path} was built with embedder {settings.embedder!r}, not {name!r}: its vectors "
            f"would not match this model's queries. Load it with {settings.embedder!r} or rebuild."
        )
    if isinstance(embedder, str):
        embedder = load_embedder(embedder, device, dtype)
    if embedder.dim != stored.index.d:
        raise IndexFormatError(
            f"embedder {name!r} makes {embedder.dim}-dim vectors; {path} holds {stored.index.d}"
        )
    faiss_index.set_search_params(stored.index, settings.search_params)
    return Index(stored.index, stored.passages, embedder, settings, stored.doc_shas)


def embed_passages(passages: Sequence[Passage], embed: EmbedPassages, dim: int) -> np.ndarray:
    """The passages' vectors, checked: a pluggable step must give one `dim` vector each."""
    vectors = embed([embedding_text(p) for p in passages])
    if vectors.shape != (len(passages), dim):
        raise RetrievalError(
            f"embedding {len(passages)} passages gave vectors of shape {vectors.shape}, "
            f"not ({len(passages)}, {dim})"
        )
    return vectors


def embedding_text(passage: Passage) -> str:
    """What gets embedded: the title gives a passage cut from the middle of a document its
    context (a title the text already opens with is not repeated)."""
    if passage.title and not passage.text.startswith(passage.title):
        return f"{passage.title}\n{passage.text}"
    return passage.text
