"""The retriever end to end with the real embedder: relevance, batching, chunking."""

from __future__ import annotations

import numpy as np
import pytest
from retrievalhelpers import DOCS, QUESTIONS

from retrieval import BuildConfig, CorpusError, Document, Embedder, Index, build_index


@pytest.mark.parametrize(("question", "doc_id"), QUESTIONS.items())
def test_relevant_passage_ranks_first(small_index: Index, question: str, doc_id: str) -> None:
    hits = small_index.search(question, k=3)
    assert hits[0].doc_id == doc_id
    assert hits[0].score > hits[1].score
    assert hits[0].title == next(d.title for d in DOCS if d.id == doc_id)


def test_batched_search_equals_one_by_one(small_index: Index) -> None:
    questions = list(QUESTIONS)
    batched = small_index.search(questions, k=4)
    singles = [small_index.search(q, k=4) for q in questions]
    assert [[p.id for p in hits] for hits in batched] == [[p.id for p in h] for h in singles]
    for b, s in zip(batched, singles, strict=False):
        np.testing.assert_allclose([p.score for p in b], [p.score for p in s], atol=2e-2)


def test_any_k_and_vector_search(small_index: Index) -> None:
    everything = small_index.search("bread", k=1000)
    assert len(everything) == len(small_index) == len(DOCS)
    assert [p.score for p in everything] == sorted((p.score for p in everything), reverse=True)
    vectors = small_index.embed_queries(["bread", "stars"])
    assert vectors.shape == (2, 384)
    top = small_index.search_vectors(vectors, k=2)
    assert [hits[0].doc_id for hits in top] == ["sourdough", "black-holes"]
    assert small_index.search([], k=3) == []


def test_long_documents_are_chunked_and_cited(embedder: Embedder) -> None:
    filler = " ".join(["The committee met and discussed the agenda."] * 40)
    text = f"{filler} The secret launch code is orange-penguin-42. {filler}"
    index = build_index(
        [Document("long", text, title="Minutes")],
        embedder,
        BuildConfig(chunk_tokens=64, chunk_overlap=16),
    )
    assert len(index) > 4
    hit = index.search("What is the secret launch code?", k=1)[0]
    assert "orange-penguin-42" in hit.text
    assert text[hit.start : hit.end] == hit.text


def test_empty_and_duplicate_corpora_fail_clearly(embedder: Embedder) -> None:
    with pytest.raises(CorpusError, match="empty corpus"):
        build_index([], embedder)
    with pytest.raises(CorpusError, match="empty corpus"):
        build_index([Document("blank", "  \n")], embedder)
    with pytest.raises(CorpusError, match="duplicate document ids: 'a'"):
        build_index([Document("a", "x"), Document("a", "y")], embedder)


def test_ivfpq_on_a_small_corpus_is_refused(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="IVF-PQ needs at least"):
        build_index(DOCS, embedder, BuildConfig(index_type="ivfpq"))


def test_chunk_longer_than_the_encoder_reads_is_refused(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="more than the embedder reads"):
        build_index(DOCS, embedder, BuildConfig(chunk_tokens=1000))
