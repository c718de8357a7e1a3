"""`lookahead-rag index`: build an index directory from a corpus, or add a corpus's new
documents to an existing one; with `--distributed`, the passages are embedded by a pool of Ray
actors (`pipeline.jobs.distributed_embedding`) and everything else is done as in a local build.

The command lives in `pipeline` because the distributed build needs Ray; retrieval itself knows
nothing of Ray."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.errors import RetrievalError

HELP = "build or extend a FAISS index from a corpus"

if TYPE_CHECKING:
    import numpy as np

    from retrieval.index import EmbedPassages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        required=True,
        help="a folder (.txt/.md/.jsonl/.parquet files), one such file, or 'stdlib' for the "
        "embedded Python standard library docs (a folder named stdlib: ./stdlib)",
    )
    parser.add_argument("--out", required=True, type=Path, help="index directory to write")
    parser.add_argument(
        "--index-type",
        default="auto",
        help="auto (by corpus size), flat (exact), hnsw, ivfpq, or a FAISS factory string",
    )
    parser.add_argument(
        "--search-params", default=None, help="FAISS search parameters, e.g. efSearch=256"
    )
    parser.add_argument(
        "--embedder",
        default=None,
        help="sentence-transformers model name or path (default: the bundled all-MiniLM-L6-v2)",
    )
    parser.add_argument("--chunk-tokens", type=int, default=128, help="passage length in tokens")
    parser.add_argument("--chunk-overlap", type=int, default=32, help="tokens shared by neighbours")
    parser.add_argument("--batch-size", type=int, default=32, help="embedding batch size")
    parser.add_argument("--device", default="cpu", help="embedder device (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", default="auto", help="embedder dtype (auto, float32, ...)")
    parser.add_argument(
        "--add",
        action="store_true",
        help="add the corpus's new documents to the index at --out instead of rebuilding "
        "(unchanged ones are skipped; the index's own embedder and settings are used)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    distributed = parser.add_argument_group(
        "distributed (Ray Data; a local loopback Ray, or server.ray_address / "
        "LOOKAHEAD_RAG__SERVER__RAY_ADDRESS)"
    )
    distributed.add_argument(
        "--distributed",
        action="store_true",
        help="embed on a pool of Ray actors, each loading the embedder once (--device is theirs)",
    )
    distributed.add_argument("--actors", type=int, default=2, help="embedder actors (default 2)")
    distributed.add_argument(
        "--block-rows", type=int, default=1024, help="passages per actor call (default 1024)"
    )
    distributed.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (needs --device cuda)"
    )


def run(args: argparse.Namespace) -> int:
    from retrieval.corpus import read_corpus
    from retrieval.embedding import DEFAULT_EMBEDDER, load_embedder
    from retrieval.index import BuildConfig, build_index, load_index

    if args.distributed:
        _check_distributed(args)
    # The driver of a distributed build only chunks: its own embedder copy stays on the CPU.
    device = "cpu" if args.distributed else args.device
    started = time.perf_counter()
    try:
        docs = read_corpus(args.corpus)
        if args.add:
            index = load_index(args.out, device=device, dtype=args.dtype)
            embed = _distributed(args, index.embedder.name)
            added = index.add_documents(docs, args.batch_size, not args.quiet, embed)
            if added:
                index.save(args.out)
        else:
            embedder = load_embedder(args.embedder or DEFAULT_EMBEDDER, device, args.dtype)
            config = BuildConfig(
                index_type=args.index_type,
                search_params=args.search_params,
                chunk_tokens=args.chunk_tokens,
                chunk_overlap=args.chunk_overlap,
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            embed = _distributed(args, embedder.name)
            index = build_index(docs, embedder, config, out=args.out, embed=embed)
            added = len(index)
    except (RetrievalError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    s = index.settings
    print(
        f"{args.out}: {len(index)} passages ({added} added) from {len(docs)} documents, "
        f"{' '.join(filter(None, (s.index_type, s.search_params)))}, embedder {s.embedder}, "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def _check_distributed(args: argparse.Namespace) -> None:
    if args.actors < 1 or args.block_rows < 1:
        raise SystemExit("--actors and --block-rows must be >= 1")
    if args.gpus_per_actor < 0:
        raise SystemExit("--gpus-per-actor must be >= 0")
    if args.gpus_per_actor > 0 and not args.device.startswith("cuda"):
        raise SystemExit("--gpus-per-actor gives the actors GPUs: add --device cuda")


def _distributed(args: argparse.Namespace, embedder: str) -> EmbedPassages | None:
    """With `--distributed`, the embedding step that runs on Ray actors (Ray starts, or is
    joined, on its first call, and is left when it returns); else None (embed here)."""
    if not args.distributed:
        return None
    from pipeline.jobs.distributed_embedding import EmbedOptions, embed_on_ray

    options = EmbedOptions(
        embedder=embedder,
        device=args.device,
        dtype=args.dtype,
        actors=args.actors,
        block_rows=args.block_rows,
        batch_size=args.batch_size,
        gpus_per_actor=args.gpus_per_actor,
        progress=not args.quiet,
    )

    def embed(texts: Sequence[str]) -> np.ndarray:
        from pipeline import ray_runtime
        from pipeline.config import load_config

        with ray_runtime.connected(load_config(), quiet=True):
            return embed_on_ray(texts, options)

    return embed
