"""Chunking by the embedder's tokens: windows, overlap, and offsets back into the text."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrieval import Document, Embedder, RetrievalError, chunk_documents
from retrieval.chunking import token_windows


@pytest.mark.parametrize(
    ("n", "size", "overlap", "windows"),
    [
        (0, 4, 1, []),
        (3, 4, 1, [(0, 3)]),
        (4, 4, 1, [(0, 4)]),
        (5, 4, 1, [(0, 4), (3, 5)]),
        (10, 4, 1, [(0, 4), (3, 7), (6, 10)]),
        (10, 4, 0, [(0, 4), (4, 8), (8, 10)]),
        (6, 3, 2, [(0, 3), (1, 4), (2, 5), (3, 6)]),
    ],
)
def test_token_windows_by_hand(n: int, size: int, overlap: int, windows: list) -> None:
    assert token_windows(n, size, overlap) == windows


@given(
    n=st.integers(0, 300),
    size=st.integers(1, 64),
    overlap_frac=st.floats(0, 0.99),
)
def test_token_windows_cover_everything_with_exact_overlap(
    n: int, size: int, overlap_frac: float
) -> None:
    overlap = int(size * overlap_frac)
    windows = token_windows(n, size, overlap)
    covered = set()
    for start, stop in windows:
        assert 0 < stop - start <= size
        covered.update(range(start, stop))
    assert covered == set(range(n))
    for (a0, a1), (b0, b1) in itertools.pairwise(windows):
        assert b0 == a0 + size - overlap  # fixed stride
        assert a1 - b0 == overlap
        assert b1 > a1  # no window inside the previous one


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (4, 4), (4, -1)])
def test_bad_chunk_settings(size: int, overlap: int) -> None:
    with pytest.raises(RetrievalError, match="chunk_tokens"):
        token_windows(10, size, overlap)


def test_passages_are_exact_slices_with_overlapping_tokens(embedder: Embedder) -> None:
    words = ["river", "stone", "light", "table", "green", "house"]  # one token each
    text = " ".join(words * 10) + "  and a tail."
    doc = Document("d", text, title="T", source="src", metadata={"k": 1})
    passages = chunk_documents([doc], embedder.tokenizer, size=16, overlap=4)
    assert len(passages) > 3
    assert [p.id for p in passages] == [f"d#{i}" for i in range(len(passages))]
    tok = embedder.tokenizer
    for p, nxt in itertools.pairwise(passages):
        assert p.text == text[p.start : p.end]
        assert (p.title, p.source, p.metadata, p.doc_id) == ("T", "src", {"k": 1}, "d")
        ids = tok(p.text, add_special_tokens=False)["input_ids"]
        assert len(ids) <= 16
        assert nxt.start < p.end  # neighbours share text
        shared = tok(text[nxt.start : p.end], add_special_tokens=False)["input_ids"]
        assert len(shared) == 4
    assert passages[0].start == 0
    assert passages[-1].end == len(text)


def test_whitespace_only_document_gives_no_passage(embedder: Embedder) -> None:
    assert chunk_documents([Document("w", " \n ")], embedder.tokenizer, 8, 2) == []
