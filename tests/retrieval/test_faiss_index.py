"""Index types through FAISS factory strings; recall of the approximate ones against exact.

Recall is measured on synthetic embedding-like vectors (see `benchmarks.retrieval_speed`) to keep
the test fast; the IVF-PQ figure is printed (pytest -s) and held to a loose floor.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.retrieval_speed import recall_at_k, synthetic_vectors
from retrieval import RetrievalError
from retrieval.faiss_index import (
    FLAT_MAX,
    HNSW_MAX,
    IVFPQ_MIN_VECTORS,
    IndexSpec,
    add_vectors,
    choose_index,
    new_index,
    search,
)


def filled(spec: IndexSpec, vectors: np.ndarray):
    index = new_index(spec, vectors.shape[1])
    add_vectors(index, vectors)
    return index


@pytest.mark.parametrize(
    ("kind", "n", "factory"),
    [
        ("auto", 10, "Flat"),
        ("auto", FLAT_MAX, "Flat"),
        ("auto", FLAT_MAX + 1, "HNSW32"),
        ("auto", HNSW_MAX + 1, "IVF4096,PQ48"),
        ("exact", 10, "Flat"),
        ("HNSW", 10, "HNSW32"),
        ("ivfpq", 100_000, "IVF1024,PQ48"),
        ("ivfpq", IVFPQ_MIN_VECTORS, "IVF256,PQ48"),
        ("HNSW64,Flat", 10, "HNSW64,Flat"),
    ],
)
def test_choose_index(kind: str, n: int, factory: str) -> None:
    assert choose_index(kind, n, 384).factory == factory


def test_ivfpq_refuses_a_corpus_too_small_to_train() -> None:
    with pytest.raises(RetrievalError, match=r"at least 9984 passages.*has 500.*'flat'"):
        choose_index("ivfpq", 500, 384)


def test_unknown_type_and_bad_parameters_fail_clearly() -> None:
    vectors = synthetic_vectors(50, 16, np.random.default_rng(0))
    with pytest.raises(RetrievalError, match=r"unknown index type 'Bogus7'.*could not parse"):
        new_index(IndexSpec("Bogus7"), 16)
    with pytest.raises(RetrievalError, match="'efSearch=8' do not fit"):
        new_index(IndexSpec("Flat", "efSearch=8"), 16)
    ivf = new_index(IndexSpec("IVF64,Flat"), 16)
    with pytest.raises(RetrievalError, match=r"cannot train the index on 50 vectors.*64"):
        add_vectors(ivf, vectors)


def test_search_checks_its_arguments_and_caps_k() -> None:
    index = filled(IndexSpec("Flat"), synthetic_vectors(5, 16, np.random.default_rng(0)))
    query = synthetic_vectors(1, 16, np.random.default_rng(1))
    scores, rows = search(index, query, k=50)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(scores[0]) <= 0)
    with pytest.raises(RetrievalError, match="k must be at least 1"):
        search(index, query, k=0)
    with pytest.raises(RetrievalError, match="8 dims; the index 16"):
        search(index, np.ones((1, 8), np.float32), k=1)


def test_hnsw_recall_at_10_against_exact() -> None:
    rng = np.random.default_rng(1)
    base, queries = synthetic_vectors(4000, 384, rng), synthetic_vectors(200, 384, rng)
    _, exact = filled(choose_index("flat", 4000, 384), base).search(queries, 10)
    _, found = filled(choose_index("hnsw", 4000, 384), base).search(queries, 10)
    recall = recall_at_k(found, exact)
    print(f"HNSW32 recall@10 = {recall:.3f}")
    assert recall >= 0.95


def test_ivfpq_trains_and_recall_at_10_is_reported() -> None:
    rng = np.random.default_rng(2)
    dim = 64  # PQ training cost grows with the dimension; the ratio 8 dims/code is kept
    base, queries = synthetic_vectors(IVFPQ_MIN_VECTORS, dim, rng), synthetic_vectors(200, dim, rng)
    spec = choose_index("ivfpq", len(base), dim)
    index = filled(spec, base)
    assert index.is_trained
    assert index.ntotal == len(base)
    _, exact = filled(IndexSpec("Flat"), base).search(queries, 10)
    _, found = index.search(queries, 10)
    recall = recall_at_k(found, exact)
    print(f"{spec.factory} {spec.search_params} recall@10 = {recall:.3f}")
    assert recall >= 0.3
