"""FAISS index types, built through FAISS's own factory strings, inner product on unit vectors.

`flat` is exact; `hnsw` is a graph index, sub-millisecond at 100k vectors with recall@10 near
1; `ivfpq` clusters and compresses vectors to 1/32 of their size for corpora in the millions
and must be trained, which needs enough vectors. `auto` picks by corpus size. Any other FAISS
factory string (`"HNSW64"`, `"IVF1024,Flat"`, ...) is passed through as is.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import faiss
import numpy as np

from retrieval.errors import RetrievalError

ALIASES = {"exact": "flat", "flat": "flat", "hnsw": "hnsw", "ivfpq": "ivfpq", "ivf-pq": "ivfpq"}
FLAT_MAX = 50_000  # `auto`: exact search stays under ~10 ms up to here
HNSW_MAX = 2_000_000  # `auto`: above, HNSW's ~1.7 kB per vector is too much memory
HNSW_M = 32
HNSW_EF_SEARCH = 128
# A PQ codebook has 256 centroids per sub-vector; FAISS wants 39 training points per centroid.
IVFPQ_MIN_VECTORS = 39 * 256
_TRAIN_SEED = 0

# One OpenMP thread unless OMP_NUM_THREADS says otherwise. Searches here are one query or a
# small batch: HNSW and IVF parallelise over queries, so a second thread gains nothing, and
# Flat over the database, where it saves well under a millisecond on an idle machine but costs
# tens when the cores are busy (the generator runs beside it): one query on 12k vectors took
# 0.95 ms p50 with one thread, 16 ms with two, on this 2-core machine under load.
if "OMP_NUM_THREADS" not in os.environ:
    faiss.omp_set_num_threads(1)


@dataclass(frozen=True)
class IndexSpec:
    """A FAISS factory string and the search parameters (FAISS `ParameterSpace` syntax) it is
    searched with; both go to the manifest, since FAISS files do not keep all of them."""

    factory: str
    search_params: str = ""


def choose_index(kind: str, n_vectors: int, dim: int) -> IndexSpec:
    """The spec for `kind` (`auto`, an alias, or a factory string) over `n_vectors` vectors."""
    alias = ALIASES.get(kind.lower()) if kind.lower() != "auto" else _auto_kind(n_vectors)
    if alias == "flat":
        return IndexSpec("Flat")
    if alias == "hnsw":
        return IndexSpec(f"HNSW{HNSW_M}", f"efSearch={HNSW_EF_SEARCH}")
    if alias == "ivfpq":
        return ivfpq_spec(n_vectors, dim)
    return IndexSpec(kind)


def ivfpq_spec(n_vectors: int, dim: int) -> IndexSpec:
    """IVF lists ~4*sqrt(n) (a power of two with 39+ vectors each), PQ sub-vectors of ~8 dims,
    probing 1/16 of the lists."""
    if n_vectors < IVFPQ_MIN_VECTORS:
        raise RetrievalError(
            f"IVF-PQ needs at least {IVFPQ_MIN_VECTORS} passages to train its codebooks; this "
            f"corpus has {n_vectors}. Use 'flat' (exact) or 'hnsw', which suit its size better."
        )
    nlist = 2 ** round(math.log2(4 * math.sqrt(n_vectors)))
    while nlist > n_vectors // 39:
        nlist //= 2
    m = max(d for d in range(1, max(dim // 8, 1) + 1) if dim % d == 0)
    return IndexSpec(f"IVF{nlist},PQ{m}", f"nprobe={max(nlist // 16, 8)}")


def _auto_kind(n_vectors: int) -> str:
    if n_vectors <= FLAT_MAX:
        return "flat"
    return "hnsw" if n_vectors <= HNSW_MAX else "ivfpq"


def new_index(spec: IndexSpec, dim: int) -> faiss.Index:
    """An empty FAISS index of `spec`, search parameters set. Cheap, so a build checks the
    type before it spends minutes embedding."""
    try:
        index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise RetrievalError(
            f"unknown index type {spec.factory!r}: use auto, flat, hnsw, ivfpq or a FAISS "
            f"factory string ({_faiss_reason(exc)})"
        ) from exc
    set_search_params(index, spec.search_params)
    return index


def add_vectors(index: faiss.Index, vectors: np.ndarray) -> None:
    """Add `vectors` (row ids follow on from the last), training the index on them first
    when it has not been trained."""
    vectors = as_vectors(vectors)
    if not index.is_trained:
        _skip_polysemous_training(index)
        try:
            index.train(_training_sample(vectors))
        except RuntimeError as exc:
            raise RetrievalError(
                f"cannot train the index on {len(vectors)} vectors: {_faiss_reason(exc)}"
            ) from exc
    index.add(vectors)


def changed_copy(index: faiss.Index, keep: np.ndarray | None, vectors: np.ndarray) -> faiss.Index:
    """A new index holding the rows `keep` of `index` (in order; None: all of them) followed by
    `vectors`; `index` itself is left as it is, so searches on it may go on meanwhile.

    Adding only copies the index and adds (HNSW grows its graph, IVF keeps its training).
    Dropping rows rebuilds the copy from its own stored vectors, trained state kept, since
    FAISS cannot remove rows from every index type: exact for Flat and HNSW, and for IVF-PQ
    the kept vectors are re-encoded from their codes (a full `lookahead-rag index` rebuild
    re-embeds them)."""
    copy = faiss.clone_index(index)
    if keep is not None and len(keep) < copy.ntotal:
        kept = _stored_vectors(copy, np.asarray(keep, dtype=np.int64))
        copy.reset()
        if len(kept):
            copy.add(kept)
    if len(vectors):
        add_vectors(copy, vectors)
    return copy


def _stored_vectors(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """The vectors `index` holds at `rows` (decoded, for a compressed index)."""
    with contextlib.suppress(RuntimeError):  # not an IVF index: rows are addressable as they are
        faiss.extract_index_ivf(index).make_direct_map()  # IVF: rows -> lists
    if not len(rows):
        return np.empty((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(rows)


def set_search_params(index: faiss.Index, params: str) -> None:
    """Apply `params` such as `"efSearch=128"` or `"nprobe=32"` to `index`."""
    if not params:
        return
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as exc:
        raise RetrievalError(
            f"search parameters {params!r} do not fit this index: {_faiss_reason(exc)}"
        ) from exc


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and row ids `[n, k]`; a row id is -1 where fewer than `k` were found."""
    if k < 1:
        raise RetrievalError(f"k must be at least 1 (got {k})")
    queries = as_vectors(queries)
    if queries.shape[1] != index.d:
        raise RetrievalError(f"query vectors have {queries.shape[1]} dims; the index {index.d}")
    return index.search(queries, min(k, max(index.ntotal, 1)))


def as_vectors(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as the contiguous float32 matrix FAISS needs (one vector becomes one row)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise RetrievalError(f"vectors must be a [n, dim] matrix (got shape {vectors.shape})")
    return vectors


def _skip_polysemous_training(index: faiss.Index) -> None:
    """IVF-PQ's default extra training step reorders PQ codes for Hamming-distance filtering,
    which this search never uses; it took 200 s of a 12k-vector build here."""
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False


def _training_sample(vectors: np.ndarray) -> np.ndarray:
    """At most 256 vectors per coarse centroid are used by FAISS anyway; a fixed-seed sample
    keeps builds reproducible."""
    cap = 256 * 1024
    if len(vectors) <= cap:
        return vectors
    rows = np.random.default_rng(_TRAIN_SEED).choice(len(vectors), cap, replace=False)
    return vectors[np.sort(rows)]


def _faiss_reason(exc: Exception) -> str:
    """FAISS prefixes its messages with the C++ function and source line; keep the reason."""
    return str(exc).rsplit(": ", 1)[-1].strip()
