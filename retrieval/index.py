"""The retriever: documents in, passages with scores out.

`build_index` chunks, embeds and indexes documents; `load_index` reopens a saved index with the
embedder it was built with; `Index.search` answers one query or a batch. Query embedding and
vector search are also separate steps (`embed_queries`, `search_vectors`), so a service can
batch the encoder across requests. Searches may run concurrently; `add_documents` and `save`
must not run alongside them.

The embedding step of a build or an add is pluggable (`EmbedPassages`): by default the
embedder embeds in this process; `pipeline` passes one that fans the texts out to Ray actors
(`lookahead-rag index --distributed`). Chunking, the index choice, training and the store stay
here, so both ways build the same index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import faiss
import numpy as np

from retrieval import faiss_index, store
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

    def add_documents(
        self,
        documents: Iterable[Document],
        batch_size: int = 32,
        progress: bool = False,
        embed: EmbedPassages | None = None,
    ) -> int:
        """Index the documents not indexed yet, without a rebuild; returns the passages added.
        A document already indexed with the same text is skipped; one whose text changed is
        an error (FAISS cannot replace vectors in every index type: rebuild instead). `embed`
        must use this index's embedder; by default it does, in this process."""
        docs = list(documents)
        check_unique_ids(docs)
        changed = [d.id for d in docs if self.doc_shas.get(d.id, d.sha) != d.sha]
        if changed:
            raise CorpusError(
                f"{len(changed)} document(s) changed since they were indexed (e.g. "
                f"{changed[0]!r}); rebuild the index to replace them"
            )
        new = [d for d in docs if d.id not in self.doc_shas and d.text.strip()]
        s = self.settings
        passages = chunk_documents(new, self.embedder.tokenizer, s.chunk_tokens, s.chunk_overlap)
        if passages:
            embed = embed or partial(
                self.embedder.embed_passages, batch_size=batch_size, progress=progress
            )
            vectors = embed_passages(passages, embed, self.vector_index.d)
            faiss_index.add_vectors(self.vector_index, vectors)
            self.passages.extend(passages)
            self.doc_shas.update((d.id, d.sha) for d in new)
        return len(passages)

    def save(self, path: str | Path) -> Path:
        """Write the index directory atomically (see `retrieval.store`)."""
        stored = store.StoredIndex(self.settings, self.vector_index, self.passages, self.doc_shas)
        store.write_index_dir(path, stored)
        return Path(path)


def build_index(
    documents: Iterable[Document],
    embedder: Embedder | str = DEFAULT_EMBEDDER,
    config: BuildConfig | None = None,
    out: str | Path | None = None,
    embed: EmbedPassages | None = None,
) -> Index:
    """Chunk, embed and index `documents`; saved to `out` (atomically) when given. `embed`
    must use `embedder`'s model (whose tokenizer chunks); by default `embedder` embeds here."""
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
        index.save(out)
    return index


def load_index(
    path: str | Path,
    embedder: Embedder | str | None = None,
    verify: bool = True,
    device: str = "cpu",
    dtype: str = "auto",
) -> Index:
    """Reopen a saved index. With no `embedder` the one named in the manifest is loaded (on
    `device`, in `dtype`); a given one must be that same model, since another model's query
    vectors would be meaningless against these passages. `verify=False` skips checksums."""
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
