"""`lookahead-rag bench-retrieval`: how fast retrieval is on this machine.

Measures passages embedded per second (real stdlib passages), single-query embedding latency,
and for each index type and corpus size: build time, memory per vector, single-query search
latency p50/p95 and recall@k against exact search; then embedding + search end to end. The
scale part uses synthetic unit vectors with a low intrinsic dimension, as sentence embeddings
have (uniform random 384-d vectors are a worst case no real corpus looks like). Prints a table;
the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

HELP = "embedding, index build, search latencies"

TARGET_SEARCH_MS = 2.0  # HNSW single-query search p50 at 100k vectors
TARGET_QUERY_EMBED_MS = 15.0  # query embedding p50
_INTRINSIC_DIM = 32
_SEED = 0


@dataclass
class IndexResult:
    kind: str
    size: int
    factory: str
    build_s: float
    bytes_per_vector: float
    search_ms: dict[str, float]
    recall_at_k: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10000,100000", help="vector counts, comma-separated")
    parser.add_argument("--types", default="flat,hnsw,ivfpq", help="index types to measure")
    parser.add_argument("--queries", type=int, default=300, help="single queries timed per case")
    parser.add_argument("--passages", type=int, default=512, help="stdlib passages to embed")
    parser.add_argument("-k", type=int, default=10, help="results per query")
    parser.add_argument("--embedder", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--dtype", default="auto", help="embedder dtype (auto, float32, ...)")
    parser.add_argument("--threads", type=int, default=None, help="torch and FAISS threads")


def run(args: argparse.Namespace) -> int:
    import faiss
    import torch

    from retrieval.embedding import DEFAULT_EMBEDDER, load_embedder

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    embedder = load_embedder(args.embedder or DEFAULT_EMBEDDER, dtype=args.dtype)
    texts, questions = _workload(embedder, args.passages, args.queries)
    report: dict = {
        "embedder": embedder.name,
        "dtype": embedder.dtype,
        "threads": {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()},
        "embed": {
            "passages": _embed_throughput(embedder, texts),
            # one line each (a signature, a title): the short-passage case
            "short": _embed_throughput(embedder, [t.splitlines()[0] for t in texts]),
        },
        "query_embed_ms": latency_ms(lambda q: embedder.embed_queries([q]), questions),
        "indexes": {},
    }
    hnsw = None
    for size in sorted(int(s) for s in args.sizes.split(",")):
        results, size_hnsw = _index_results(size, embedder.dim, args.types.split(","), args)
        report["indexes"].update({f"{r.kind}@{r.size}": asdict(r) for r in results})
        hnsw = size_hnsw or hnsw
    targets = {
        f"query_embed_p50_le_{TARGET_QUERY_EMBED_MS:g}ms": report["query_embed_ms"]["p50"]
        <= TARGET_QUERY_EMBED_MS
    }
    if hnsw:
        index, result = hnsw
        report[f"end_to_end_hnsw@{result.size}_ms"] = latency_ms(
            lambda q: index.search(embedder.embed_queries([q]), args.k), questions
        )
        name = f"hnsw@{result.size}_search_p50_le_{TARGET_SEARCH_MS:g}ms"
        targets[name] = result.search_ms["p50"] <= TARGET_SEARCH_MS
    report["targets_met"] = targets
    report["load_avg_1m"] = round(os.getloadavg()[0], 2)  # these machines are shared
    _print_table(report)
    print(json.dumps(report))
    return 0


def _workload(embedder, passages: int, queries: int) -> tuple[list[str], list[str]]:
    """Texts to embed (stdlib passages as an index would embed them) and questions about them."""
    from retrieval.index import embedding_text

    sample = _sample_passages(embedder, passages)
    questions = [f"How do I use {p.title} in Python?" for p in sample]
    questions = (questions * (queries // max(len(questions), 1) + 1))[:queries]
    return [embedding_text(p) for p in sample], questions


def latency_ms(fn: Callable[[object], object], inputs: Sequence[object]) -> dict[str, float]:
    """Wall-clock p50/p95 of `fn` over `inputs`, one call each, after a few warm-up calls, and
    the p50 of the process's CPU time per call: on a shared machine the wall clock also counts
    time spent waiting for a core, the CPU time does not (with one thread it is the cost)."""
    for x in inputs[:3]:
        fn(x)
    wall, cpu = [], []
    for x in inputs:
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(x)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    p50, p95 = np.percentile(wall, [50, 95])
    cpu_p50 = float(np.median(cpu))
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "cpu_p50": round(cpu_p50, 3)}


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k ids (rows of `exact`) that `found` also returned."""
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors on a random `_INTRINSIC_DIM`-dim subspace plus a little isotropic noise."""
    basis = np.random.default_rng(_SEED).standard_normal((_INTRINSIC_DIM, dim))
    x = rng.standard_normal((n, _INTRINSIC_DIM)) @ basis
    noise = rng.standard_normal((n, dim)) * (0.1 / np.sqrt(dim))
    x += noise * np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _sample_passages(embedder, count: int):
    """Passages of every n-th stdlib document, so the sample spans short and long ones."""
    from retrieval.chunking import chunk_documents
    from retrieval.stdlib_docs import stdlib_documents

    docs = stdlib_documents()
    docs = docs[:: max(len(docs) // count, 1)]
    return chunk_documents(docs, embedder.tokenizer, 128, 32)[:count]


def _embed_throughput(embedder, texts: list[str]) -> dict[str, float]:
    tokens = sum(len(ids) for ids in embedder.tokenizer(texts)["input_ids"])
    embedder.embed_passages(texts[:32])
    start = time.perf_counter()
    embedder.embed_passages(texts, batch_size=32)
    seconds = time.perf_counter() - start
    return {
        "passages": len(texts),
        "mean_tokens": round(tokens / len(texts), 1),
        "passages_per_s": round(len(texts) / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
    }


def _index_results(
    size: int, dim: int, kinds: list[str], args
) -> tuple[list[IndexResult], tuple[object, IndexResult] | None]:
    """The results for one corpus size, and its HNSW index with its result (kept for the
    end-to-end run)."""
    import faiss

    from retrieval import faiss_index

    rng = np.random.default_rng(size)
    base = synthetic_vectors(size, dim, rng)
    queries = synthetic_vectors(args.queries, dim, rng)
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    _, exact = flat.search(queries, args.k)
    results, hnsw = [], None
    for kind in kinds:
        if kind == "ivfpq" and size < faiss_index.IVFPQ_MIN_VECTORS:
            continue
        spec = faiss_index.choose_index(kind, size, dim)
        start = time.perf_counter()
        index = faiss_index.new_index(spec, dim)
        faiss_index.add_vectors(index, base)
        build_s = time.perf_counter() - start
        _, found = index.search(queries, args.k)
        results.append(
            IndexResult(
                kind=kind,
                size=size,
                factory=spec.factory + (f" {spec.search_params}" if spec.search_params else ""),
                build_s=round(build_s, 3),
                bytes_per_vector=round(faiss.serialize_index(index).nbytes / size, 1),
                search_ms=latency_ms(lambda q, i=index: i.search(q[None, :], args.k), queries),
                recall_at_k=round(recall_at_k(found, exact), 4),
            )
        )
        if kind == "hnsw":
            hnsw = (index, results[-1])
    return results, hnsw


def _print_table(report: dict) -> None:
    q = report["query_embed_ms"]
    print(
        f"embedder {report['embedder']} ({report['dtype']}), threads {report['threads']}, "
        f"load avg {report['load_avg_1m']}"
    )
    for kind, e in report["embed"].items():
        print(
            f"embedding {kind}: {e['passages_per_s']} passages/s, {e['tokens_per_s']} tokens/s "
            f"({e['passages']} stdlib texts, {e['mean_tokens']} tokens on average)"
        )
    print(f"query embedding: {_latency(q)}")
    header = f"{'index':<14}{'factory':<28}{'build s':>9}{'B/vector':>10}"
    print(header + f"{'p50 ms':>9}{'p95 ms':>9}{'cpu p50':>9}{'recall':>8}")
    for name, r in report["indexes"].items():
        ms = r["search_ms"]
        print(
            f"{name:<14}{r['factory']:<28}{r['build_s']:>9.2f}{r['bytes_per_vector']:>10.0f}"
            f"{ms['p50']:>9.3f}{ms['p95']:>9.3f}{ms['cpu_p50']:>9.3f}{r['recall_at_k']:>8.3f}"
        )
    for key, value in report.items():
        if key.startswith("end_to_end"):
            print(f"{key}: {_latency(value)}")
    for name, ok in report["targets_met"].items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")


def _latency(ms: dict[str, float]) -> str:
    return f"p50 {ms['p50']} ms, p95 {ms['p95']} ms (CPU time p50 {ms['cpu_p50']} ms)"
