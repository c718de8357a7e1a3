"""Changes by document id: add, update and delete documents, writing a new index version.

A change never touches the index it starts from (a service may be searching it): it makes a new
`Index` from the kept rows' stored vectors and the new documents' passages. Only documents that
are new or whose content changed are chunked and embedded; an updated document's passages all
go, and its new ones come in. `update_index` does the whole read -> change -> publish under the
directory's lock, so changes from several processes (a CLI, the service's builder) are applied
one after the other, each on top of the last, and none is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from retrieval import faiss_index, versions
from retrieval.chunking import chunk_documents
from retrieval.documents import Changes
from retrieval.embedding import Embedder
from retrieval.errors import ChangeError
from retrieval.index import EmbedPassages, Index, embed_passages, load_index, publish


@dataclass(frozen=True)
class Applied:
    index: Index
    change: versions.Change
    embedded: int  # passages embedded for this change


def apply_changes(
    index: Index,
    changes: Changes,
    embed: EmbedPassages | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> Applied:
    """The index `changes` make of `index` (left as it is). Adding a document indexed already
    with the same content, or updating one to the content it has, changes nothing and embeds
    nothing; adding one that exists with other content, or updating or deleting one that does
    not exist, is a `ChangeError` naming the ids."""
    changes.check()
    shas = index.doc_shas
    ChangeError.refuse(
        [d.id for d in changes.add if shas.get(d.id, d.sha) != d.sha], "exists: update it"
    )
    ChangeError.refuse([d.id for d in changes.update if d.id not in shas], "is not indexed: add it")
    ChangeError.refuse([i for i in changes.delete if i not in shas], "is not indexed")
    added = [d for d in changes.add if d.id not in shas]
    updated = [d for d in changes.update if shas[d.id] != d.sha]
    gone = {d.id for d in updated} | set(changes.delete)
    kept = [row for row, p in enumerate(index.passages) if p.doc_id not in gone]
    s = index.settings
    new = chunk_documents(
        [*added, *updated], index.embedder.tokenizer, s.chunk_tokens, s.chunk_overlap
    )
    dim = index.vector_index.d
    vectors = np.empty((0, dim), dtype=np.float32)
    if new:
        embed = embed or partial(
            index.embedder.embed_passages, batch_size=batch_size, progress=progress
        )
        vectors = embed_passages(new, embed, dim)
    doc_shas = {i: sha for i, sha in shas.items() if i not in gone}
    doc_shas.update((d.id, d.sha) for d in (*added, *updated))
    changed = Index(
        vector_index=faiss_index.changed_copy(index.vector_index, np.array(kept), vectors),
        passages=[index.passages[row] for row in kept] + new,
        embedder=index.embedder,
        settings=s,
        doc_shas=doc_shas,
    )
    change = versions.Change(
        added=len(added),
        updated=len(updated),
        deleted=len(changes.delete),
        unchanged=len(changes.add) + len(changes.update) - len(added) - len(updated),
    )
    return Applied(changed, change, len(new))


def update_index(
    root: str | Path,
    changes: Changes,
    embedder: Embedder | None = None,
    embed: EmbedPassages | None = None,
    keep: int = versions.DEFAULT_KEEP,
    device: str = "cpu",
    dtype: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[versions.VersionInfo, Applied | None]:
    """Apply `changes` to the current version of `root` and publish the result as the next
    version (`retrieval.index.publish` checks it first), all under the directory's lock. A
    change that changes nothing publishes nothing: the current version comes back, with None.
    `embedder` (the index's own model, loaded) saves loading it again."""
    changes.check()
    with versions.locked(root):
        versions.convert_unversioned(root)
        index = load_index(root, embedder, device=device, dtype=dtype)
        applied = apply_changes(index, changes, embed, batch_size, progress)
        if not applied.change.any:
            return versions.info(root), None
        return publish(applied.index, root, applied.change, keep), applied
