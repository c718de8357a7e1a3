"""Split documents into passages by tokens of the embedder's own tokenizer, with overlap.

Counting in the embedder's tokens means a passage never runs past what the encoder reads;
the overlap keeps a sentence cut at a boundary whole in one of the two passages. A passage's
text is the exact slice `doc.text[start:end]`, so citations can point back into the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from retrieval.documents import Document, Passage
from retrieval.errors import RetrievalError

_TOKENIZE_BATCH = 256


class OffsetTokenizer(Protocol):
    """What chunking needs of a tokenizer: a fast HF tokenizer's offset mapping."""

    is_fast: bool

    def __call__(self, text: list[str], **kwargs: object) -> dict[str, list]: ...


def token_windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open token ranges of at most `size` tokens, consecutive ones sharing `overlap`
    tokens, together covering `range(n_tokens)`; no window lies inside the previous one."""
    check_chunking(size, overlap)
    step = size - overlap
    return [
        (start, min(start + size, n_tokens))
        for start in range(0, n_tokens, step)
        if start == 0 or start + overlap < n_tokens
    ]


def check_chunking(size: int, overlap: int, max_tokens: int | None = None) -> None:
    if size < 1 or not 0 <= overlap < size:
        raise RetrievalError(
            f"chunking needs chunk_tokens >= 1 and 0 <= overlap < chunk_tokens "
            f"(got chunk_tokens={size}, overlap={overlap})"
        )
    if max_tokens is not None and size > max_tokens:
        raise RetrievalError(
            f"chunk_tokens={size} is more than the embedder reads ({max_tokens} tokens); "
            f"the rest of each passage would be ignored"
        )


def chunk_documents(
    docs: Sequence[Document], tokenizer: OffsetTokenizer, size: int, overlap: int
) -> list[Passage]:
    """Passages `"{doc.id}#{i}"` of `size` tokens with `overlap`, in document order."""
    check_chunking(size, overlap)
    if not getattr(tokenizer, "is_fast", False):
        raise RetrievalError("chunking needs a fast tokenizer (one that reports offsets)")
    passages: list[Passage] = []
    for lo in range(0, len(docs), _TOKENIZE_BATCH):
        batch = docs[lo : lo + _TOKENIZE_BATCH]
        encoded = tokenizer(
            [doc.text for doc in batch],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            verbose=False,
        )
        for doc, offsets in zip(batch, encoded["offset_mapping"], strict=True):
            passages.extend(_chunk(doc, offsets, size, overlap))
    return passages


def _chunk(
    doc: Document, offsets: Sequence[tuple[int, int]], size: int, overlap: int
) -> list[Passage]:
    passages = []
    for i, (first, stop) in enumerate(token_windows(len(offsets), size, overlap)):
        start, end = offsets[first][0], offsets[stop - 1][1]
        passages.append(
            Passage(
                id=f"{doc.id}#{i}",
                doc_id=doc.id,
                text=doc.text[start:end],
                title=doc.title,
                source=doc.source,
                start=start,
                end=end,
                metadata=doc.metadata,
            )
        )
    return passages
